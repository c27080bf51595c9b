//! The model's public API as `leadscore check` and the other commands use it: loading files,
//! and rendering every error with its location.

use std::path::Path;

use leadscore::model::parse::render_errors;
use leadscore::model::{Model, ModelLoadError};

fn example(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(name)
}

#[test]
fn example_models_load() {
    let full = Model::load(&example("model.toml")).expect("examples/model.toml is valid");
    let nofit = Model::load(&example("model-nofit.toml")).expect("examples/model-nofit.toml is valid");
    assert_eq!((full.name.as_str(), full.version.as_str()), ("default", "2026-12-01"));
    assert!(!full.fits.is_empty());
    assert!(nofit.fits.is_empty());
    assert_eq!(full.rules.len(), nofit.rules.len());
}

#[test]
fn invalid_model_file_reports_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "name = \"m\"\nversion = \"1\"\n[score]\nqualify_at = 60\ndisqualify_below = 61\nhalf_life = \"2 weeks\"\n\
         [[rule]]\nid = \"r\"\nevent = \"login\"\npoints = 1\ngroup = \"nope\"\n",
    )
    .unwrap();
    let Err(ModelLoadError::Invalid { path: shown, errors }) = Model::load(&path) else {
        panic!("expected an invalid model");
    };
    assert_eq!(errors.len(), 3, "{errors:#?}");
    let text = render_errors("bad.toml", &errors);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("bad.toml:5:20: error: disqualify_below (61) must not be greater than qualify_at (60)")
    );
    assert!(lines[0].ends_with("(at score.disqualify_below)"));
    assert!(lines[1].starts_with("bad.toml:6:13: error: invalid duration \"2 weeks\""));
    assert!(lines[2].starts_with("bad.toml:11:9: error: unknown group \"nope\""));
    assert!(shown.ends_with("bad.toml"));
}

#[test]
fn missing_file_is_an_io_error() {
    let err = Model::load(Path::new("/nonexistent/model.toml")).unwrap_err();
    assert!(matches!(err, ModelLoadError::Io { .. }));
    assert!(err.to_string().starts_with("cannot read model /nonexistent/model.toml"));
}
