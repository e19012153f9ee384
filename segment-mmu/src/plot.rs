//! What every SVG plot of the workspace shares (bench, project, place, tier, hotness):
//! one error type, one palette, one way to name the file a backend failed on.
//!
//! All plots are drawn with plotters' SVG backend, so the files open in any browser and
//! diff as text.

use std::path::Path;

use plotters::prelude::*;

/// What plotters returns when drawing to an SVG file fails.
pub type DrawError = DrawingAreaErrorKind<std::io::Error>;

/// A plot that could not be drawn or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing to plot (`runs`, `results`, ...).
    #[error("no {0} to plot")]
    Empty(&'static str),
    /// The drawing backend failed (usually: the file could not be written).
    #[error("plot {path}: {source}")]
    Draw {
        /// Output file.
        path: String,
        /// Cause.
        #[source]
        source: DrawError,
    },
}

/// Maps a backend error to [`Error::Draw`] naming `path`.
pub fn drawing(path: &Path) -> impl Fn(DrawError) -> Error + '_ {
    move |source| Error::Draw {
        path: path.display().to_string(),
        source,
    }
}

/// Series colour `i` of the shared palette.
pub fn color(i: usize) -> RGBColor {
    let (r, g, b) = Palette99::pick(i).to_rgba().rgb();
    RGBColor(r, g, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir/x.svg");
        let root = SVGBackend::new(&path, (10, 10)).into_drawing_area();
        root.fill(&WHITE).unwrap();
        let e = root.present().map_err(drawing(&path)).unwrap_err();
        assert!(e.to_string().contains("missing-dir/x.svg"), "{e}");
        assert!(std::error::Error::source(&e).is_some());
        assert_ne!(color(0), color(1));
    }
}
