//! clap adapter for the library's [`Named`] enums: the library types name their values,
//! this module makes them `clap::ValueEnum`s, so clap stays out of library modules.

use clap::builder::PossibleValue;
use segment_mmu::named::Named;

/// `impl clap::ValueEnum` for library types through their [`Named`] impl.
macro_rules! value_enum {
    ($($t:ty),* $(,)?) => {$(
        impl clap::ValueEnum for $t {
            fn value_variants<'a>() -> &'a [Self] {
                <$t as Named>::ALL
            }
            fn to_possible_value(&self) -> Option<PossibleValue> {
                Some(possible(*self))
            }
        }
    )*};
}

fn possible<T: Named>(v: T) -> PossibleValue {
    let p = PossibleValue::new(v.name());
    match v.help() {
        "" => p,
        h => p.help(h),
    }
}

value_enum!(
    crate::host::MmuRequest,
    crate::dirty::DirtyMode,
    crate::memory::Backing,
    crate::probe::layout::PageSize,
    crate::boot::BzImageMode,
    crate::seccomp::SeccompLevel,
    crate::snapshot::MemoryMode,
);

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use crate::memory::Backing;
    use crate::probe::layout::PageSize;

    #[test]
    fn library_names_are_clap_values() {
        assert_eq!(Backing::from_str("thp", false), Ok(Backing::Thp));
        assert_eq!(PageSize::from_str("2m", false), Ok(PageSize::Size2M));
        assert!(Backing::from_str("5m", false).is_err());
        let names: Vec<_> = crate::dirty::DirtyMode::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value())
            .map(|p| p.get_name().to_string())
            .collect();
        assert_eq!(names, ["auto", "ring", "bitmap"]);
    }
}
