#!/bin/busybox sh
# /init of the realkvm VM (tests/realkvm/run.sh): loads kvm_amd once per mode in
# /etc/realkvm.conf (npt=1, npt=0), runs /etc/cmds, and sends each command's directory
# back over COM2 (/dev/ttyS1) as a framed base64 tar.gz, then powers off.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
. /etc/realkvm.conf
# THP as on the project's hosts (the Debian kernel defaults to `always`, under which
# segvmm's 4k backing is populated with 2 MiB pages before its MADV_NOHUGEPAGE applies).
echo madvise >/sys/kernel/mm/transparent_hugepage/enabled
CH=/dev/ttyS1
stty -F $CH raw -echo 2>/dev/null
echo "@@SEGVMM-START" >$CH

send() { # send DIR (relative to /tmp/r)
	{
		echo "@@SEGVMM-RESULT BEGIN $1"
		tar -czf - -C /tmp/r "$1" | base64
		echo "@@SEGVMM-RESULT END"
	} >$CH
}

insmod /lib/kvm/irqbypass.ko
insmod /lib/kvm/kvm.ko
for m in $MODES; do
	D=npt$m
	mkdir -p /tmp/r/$D
	rmmod kvm_amd 2>/dev/null
	dmesg -c >/dev/null
	insmod /lib/kvm/kvm-amd.ko npt=$m >/tmp/r/$D/insmod.txt 2>&1
	{
		echo "insmod kvm-amd.ko npt=$m: rc $?"
		for p in /sys/module/kvm_amd/parameters/*; do echo "$(basename $p)=$(cat $p)"; done
		ls -l /dev/kvm
		dmesg -c
	} >>/tmp/r/$D/modules.txt 2>&1
	echo "realkvm: kvm_amd npt=$m loaded" >/dev/console
	send $D
	n=0
	while IFS= read -r line; do
		R=/tmp/r/$D/$n
		mkdir -p $R
		echo "$line" >$R/cmd
		echo "realkvm: [$D/$n] $line" >/dev/console
		(cd $R && R=$R timeout -s KILL $CMD_TIMEOUT sh -c "$line" </dev/null >$R/stdout 2>$R/stderr)
		echo $? >$R/rc
		dmesg -c >$R/dmesg
		echo "realkvm: [$D/$n] rc $(cat $R/rc)" >/dev/console
		send $D/$n
		rm -rf $R
		n=$((n + 1))
	done </etc/cmds
done
echo "@@SEGVMM-DONE" >$CH
sync
poweroff -f
