//! The config directory as files and documents: which files count, a cheap
//! fingerprint to notice changes, and splitting a file into YAML documents.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Whether a directory entry is a config file: `*.yaml` / `*.yml`, not hidden.
/// Hidden entries are skipped so editor swap files and the `..data` links of
/// a mounted ConfigMap are never read twice.
pub fn is_config_file_name(name: &str) -> bool {
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// The config files of `dir` (not recursive), sorted by name so load order,
/// and with it "first definition wins", is stable.
pub fn list_config_files(dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !is_config_file_name(&name) {
            continue;
        }
        // Follows symlinks: a ConfigMap mount is made of links to files.
        let path = entry.path();
        if fs::metadata(&path).map(|m| m.is_dir()).unwrap_or(false) {
            continue;
        }
        files.push((name, path));
    }
    files.sort();
    Ok(files)
}

/// What one config file looked like when last listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp {
    pub name: String,
    pub len: u64,
    pub modified: Option<SystemTime>,
    /// Inode, so a same-size replacement in the same mtime tick still shows.
    pub inode: u64,
    /// Set when the file's metadata could not be read (e.g. a dangling link).
    pub unreadable: Option<String>,
}

/// A cheap summary of the directory: names, sizes, mtimes and inodes of the
/// config files. Any edit, creation, removal or symlink swap changes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fingerprint {
    Files(Vec<FileStamp>),
    /// The directory itself could not be listed.
    Unreadable(String),
}

pub fn fingerprint(dir: &Path) -> Fingerprint {
    let files = match list_config_files(dir) {
        Ok(files) => files,
        Err(err) => return Fingerprint::Unreadable(err.to_string()),
    };
    let stamps = files
        .into_iter()
        .map(|(name, path)| file_stamp(&name, &path))
        .collect();
    Fingerprint::Files(stamps)
}

/// The stamp of the config file `name` at `path` (links followed).
pub fn file_stamp(name: &str, path: &Path) -> FileStamp {
    match fs::metadata(path) {
        Ok(meta) => FileStamp {
            name: name.to_owned(),
            len: meta.len(),
            modified: meta.modified().ok(),
            inode: inode_of(&meta),
            unreadable: None,
        },
        Err(err) => FileStamp {
            name: name.to_owned(),
            len: 0,
            modified: None,
            inode: 0,
            unreadable: Some(err.to_string()),
        },
    }
}

#[cfg(unix)]
fn inode_of(meta: &fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    meta.ino()
}

#[cfg(not(unix))]
fn inode_of(_meta: &fs::Metadata) -> u64 {
    0
}

/// One YAML document of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentText {
    /// 1-based position among the file's documents.
    pub index: usize,
    /// 1-based line in the file where the document's text starts.
    pub first_line: usize,
    pub text: String,
    /// False when the document holds only markers, comments and blank lines.
    pub has_content: bool,
}

fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r']))
}

fn is_content_line(line: &str) -> bool {
    // `--- {a: 1}` carries content after its marker.
    let rest = if is_marker(line, "---") {
        &line[3..]
    } else if is_marker(line, "...") || line.starts_with('%') {
        ""
    } else {
        line
    };
    let rest = rest.trim();
    !(rest.is_empty() || rest.starts_with('#'))
}

/// Splits a YAML stream into its documents, so one broken document cannot
/// take the others of its file down with it. YAML forbids `---` and `...` at
/// the start of a line inside any document content, so splitting on those
/// lines is exact.
pub fn split_documents(text: &str) -> Vec<DocumentText> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // Each chunk: (first line, lines, opened by an explicit `---`).
    let mut chunks: Vec<(usize, Vec<&str>, bool)> = Vec::new();
    let mut current: (usize, Vec<&str>, bool) = (1, Vec::new(), false);
    let mut after_end_marker = false;
    for (number, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l)) {
        if is_marker(line, "---") {
            chunks.push(std::mem::replace(&mut current, (number, vec![line], true)));
            after_end_marker = false;
        } else if after_end_marker {
            // After `...` only directives/comments may precede the next `---`,
            // or a new bare document starts.
            chunks.push(std::mem::replace(&mut current, (number, vec![line], false)));
            after_end_marker = false;
        } else {
            current.1.push(line);
            after_end_marker = is_marker(line, "...");
        }
    }
    chunks.push(current);

    // A chunk without content that is followed by an explicit `---` (a
    // leading comment block, directives) belongs to that next document.
    let mut merged: Vec<(usize, Vec<&str>)> = Vec::new();
    let mut pending: Option<(usize, Vec<&str>)> = None;
    let total = chunks.len();
    for (position, (first_line, lines, _)) in chunks.iter().cloned().enumerate() {
        let has_content = lines.iter().any(|l| is_content_line(l));
        let opened_explicitly = lines.first().is_some_and(|l| is_marker(l, "---"));
        let next_is_explicit = chunks
            .get(position + 1)
            .is_some_and(|(_, _, explicit)| *explicit);
        let (first_line, lines) = match pending.take() {
            Some((pending_first, mut pending_lines)) => {
                pending_lines.extend(lines);
                (pending_first, pending_lines)
            }
            None => (first_line, lines),
        };
        if !has_content && !opened_explicitly && next_is_explicit && position + 1 < total {
            pending = Some((first_line, lines));
            continue;
        }
        merged.push((first_line, lines));
    }

    merged
        .into_iter()
        .filter(|(_, lines)| !lines.is_empty())
        .enumerate()
        .map(|(i, (first_line, lines))| DocumentText {
            index: i + 1,
            first_line,
            has_content: lines.iter().any(|l| is_content_line(l)),
            text: lines.join("\n") + "\n",
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (index, first line, has content) of each document.
    type Summary = Vec<(usize, usize, bool)>;

    fn summary(text: &str) -> Summary {
        split_documents(text)
            .into_iter()
            .map(|d| (d.index, d.first_line, d.has_content))
            .collect()
    }

    #[test]
    fn config_file_names() {
        let table = [
            ("a.yaml", true),
            ("a.yml", true),
            ("a.json", false),
            ("a.yaml.bak", false),
            (".a.yaml", false),
            ("..data", false),
            ("yaml", false),
        ];
        for (name, expected) in table {
            assert_eq!(is_config_file_name(name), expected, "{name}");
        }
    }

    #[test]
    fn splits_documents_with_their_positions() {
        let table: [(&str, Summary); 8] = [
            ("a: 1\n", vec![(1, 1, true)]),
            ("---\na: 1\n", vec![(1, 1, true)]),
            (
                "# header\n---\na: 1\n---\nb: 2\n",
                vec![(1, 1, true), (2, 4, true)],
            ),
            ("a: 1\n---\nb: 2\n", vec![(1, 1, true), (2, 2, true)]),
            (
                "a: 1\n---\n---\nb: 2\n",
                vec![(1, 1, true), (2, 2, false), (3, 3, true)],
            ),
            ("a: 1\n---\n", vec![(1, 1, true), (2, 2, false)]),
            ("a: 1\n...\nb: 2\n", vec![(1, 1, true), (2, 3, true)]),
            ("", vec![]),
        ];
        for (text, expected) in table {
            assert_eq!(summary(text), expected, "{text:?}");
        }
    }

    #[test]
    fn dashes_inside_content_do_not_split() {
        let docs = split_documents("a: |\n  ---\n  text\nb: --- x\n");
        assert_eq!(docs.len(), 1);
    }

    #[test]
    fn marker_with_content_on_the_same_line_starts_a_document() {
        let docs = split_documents("a: 1\n--- {b: 2}\n");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].text, "--- {b: 2}\n");
        assert!(docs[1].has_content);
    }

    #[test]
    fn fingerprint_sees_new_changed_and_removed_files() {
        let dir = match tempfile::tempdir() {
            Ok(dir) => dir,
            Err(err) => panic!("tempdir: {err}"),
        };
        let write = |name: &str, text: &str| {
            if let Err(err) = fs::write(dir.path().join(name), text) {
                panic!("write {name}: {err}");
            }
        };
        let empty = fingerprint(dir.path());
        assert_eq!(empty, Fingerprint::Files(vec![]));
        write("a.yaml", "a: 1\n");
        write("ignored.txt", "x");
        write(".hidden.yaml", "x");
        let one = fingerprint(dir.path());
        match &one {
            Fingerprint::Files(stamps) => {
                let names: Vec<&str> = stamps.iter().map(|s| s.name.as_str()).collect();
                assert_eq!(names, ["a.yaml"]);
            }
            other => panic!("unexpected {other:?}"),
        }
        write("a.yaml", "a: 12\n");
        let changed = fingerprint(dir.path());
        assert_ne!(one, changed);
        if let Err(err) = fs::remove_file(dir.path().join("a.yaml")) {
            panic!("remove: {err}");
        }
        assert_eq!(fingerprint(dir.path()), empty);
        assert!(matches!(
            fingerprint(&dir.path().join("missing")),
            Fingerprint::Unreadable(_)
        ));
    }
}
