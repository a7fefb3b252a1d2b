use std::io::Read;

use super::*;

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn new_file_gets_the_bytes_and_exactly_the_mode() {
    let dir = tempfile::tempdir().unwrap();
    for (name, mode) in [("key.json", 0o600), ("shim", 0o755), ("conf", 0o640)] {
        let path = dir.path().join(name);
        atomic_write(&path, name.as_bytes(), mode).unwrap();
        assert_eq!(fs::read(&path).unwrap(), name.as_bytes());
        assert_eq!(mode_of(&path), mode, "{name}");
    }
    assert_eq!(names_in(dir.path()), ["conf", "key.json", "shim"]);
}

#[test]
fn replacing_swaps_in_a_new_file_with_the_new_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("record.json");
    fs::write(&path, b"old").unwrap();
    fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
    let mut reader = File::open(&path).unwrap();

    atomic_write(&path, b"new", 0o600).unwrap();

    assert_eq!(fs::read(&path).unwrap(), b"new");
    assert_eq!(mode_of(&path), 0o600);
    // The old file was replaced, not rewritten in place: a reader that had
    // it open still sees all of the old contents.
    let mut seen = Vec::new();
    reader.read_to_end(&mut seen).unwrap();
    assert_eq!(seen, b"old");
    assert_eq!(names_in(dir.path()), ["record.json"]);
}

#[test]
fn failed_rename_leaves_no_temporary_file_and_the_target_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    // A non-empty directory cannot be replaced by a file.
    let path = dir.path().join("taken");
    fs::create_dir(&path).unwrap();
    fs::write(path.join("inside"), b"x").unwrap();

    let err = atomic_write(&path, b"new", 0o644).unwrap_err();

    assert_eq!(err.step, WriteStep::Rename);
    assert_eq!(err.path, path);
    assert_eq!(names_in(dir.path()), ["taken"]);
    assert_eq!(names_in(&path), ["inside"]);
}

#[test]
fn missing_parent_fails_at_creation_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing/key.json");
    let err = atomic_write(&path, b"x", 0o600).unwrap_err();
    assert_eq!(err.step, WriteStep::CreateTemp);
    assert_eq!(err.source.kind(), io::ErrorKind::NotFound);
    assert!(!path.exists());
    assert!(names_in(dir.path()).is_empty());
}

#[test]
fn a_path_without_file_name_is_refused() {
    let err = atomic_write(Path::new("/"), b"x", 0o600).unwrap_err();
    assert_eq!(err.step, WriteStep::CreateTemp);
    assert_eq!(err.source.kind(), io::ErrorKind::InvalidInput);
}

#[test]
fn relative_paths_write_beside_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain");
    // A bare file name has an empty parent: the current directory.
    assert_eq!(Path::new("plain").parent(), Some(Path::new("")));
    atomic_write(&path, b"x", 0o600).unwrap();
    assert_eq!(names_in(dir.path()), ["plain"]);
}

#[test]
fn temp_file_names_are_recognised() {
    fn parse(name: &str) -> Option<TempFileName<'_>> {
        parse_temp_file_name(OsStr::new(name))
    }
    let writer_pid = |name: &str| parse(name).map(|temp| temp.writer_pid);
    assert_eq!(writer_pid(".abc.json.tmp.42.0"), Some(42));
    assert_eq!(writer_pid("abc.json"), None);
    assert_eq!(writer_pid(".abc.json.tmp.x.0"), None);
    assert_eq!(writer_pid(".abc.json.tmp.42"), None);
    assert_eq!(
        parse(".tailnet-cni.tmp.7.12"),
        Some(TempFileName {
            target: "tailnet-cni",
            writer_pid: 7
        })
    );
    assert_eq!(
        parse(".a.tmp.b.tmp.1.2").map(|temp| temp.target),
        Some("a.tmp.b")
    );
    assert_eq!(parse("abc.json.tmp.42.0"), None);
}

#[test]
fn a_write_interrupted_before_the_rename_leaves_a_recognisable_name() {
    let dir = tempfile::tempdir().unwrap();
    let (tmp, _file) = create_temp(dir.path(), OsStr::new("10-net.conflist"), 0o644).unwrap();
    let name = tmp.file_name().unwrap();
    assert_eq!(tmp.parent(), Some(dir.path()));
    assert_eq!(
        parse_temp_file_name(name),
        Some(TempFileName {
            target: "10-net.conflist",
            writer_pid: std::process::id()
        })
    );
    // CNI config loaders only read *.conf, *.conflist and *.json.
    let name = name.to_str().unwrap();
    assert!(name.starts_with('.'));
    assert!(![".conf", ".conflist", ".json"]
        .iter()
        .any(|ext| name.ends_with(ext)));
}
