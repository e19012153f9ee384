#!/bin/busybox sh
# /init of /gk/stock-virtio.cpio (built by tests/realkvm/run.sh): the stock Debian kernel
# as a segvmm guest under kvm_amd. That kernel has virtio-mmio only as a module and without
# command-line devices (VIRTIO_MMIO_CMDLINE_DEVICES unset), so it can find segvmm's
# virtio devices only in the DSDT (LNRO0005). Loads the virtio modules, lists the ACPI
# virtio-mmio devices and block devices found, prints the first 16 bytes of /dev/vda, then
# reboots (reboot=k: segvmm ends the run).
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in virtio virtio_ring virtio_mmio virtio_blk; do
	insmod /lib/$m.ko || echo "SEGVMM_DSDT insmod $m failed"
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do
	sleep 0.1
	i=$((i + 1))
done
echo "SEGVMM_DSDT acpi: $(ls /sys/bus/acpi/devices | grep -c LNRO0005) LNRO0005"
echo "SEGVMM_DSDT platform: $(ls /sys/bus/platform/drivers/virtio-mmio | grep LNRO0005 | tr '\n' ' ')"
echo "SEGVMM_DSDT blocks: $(ls /sys/block | tr '\n' ' ')"
echo "SEGVMM_DSDT vda: $(head -c 16 /dev/vda 2>&1)"
reboot -f
