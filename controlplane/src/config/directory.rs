//! The whole config directory: every file parsed (or taken from the parse
//! cache) and the documents validated together into one [`MeshConfig`].

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use super::loader::{ParsedFiles, parse_file};
use super::source::{FileStamp, file_stamp, list_config_files};
use super::validate;
use crate::error::Error;
use crate::model::MeshConfig;

/// The validated config of a directory and every problem found in it.
#[derive(Debug, Default)]
pub struct LoadedConfig {
    pub config: MeshConfig,
    pub errors: Vec<Error>,
    pub warnings: Vec<String>,
}

/// Loads and validates every config file of `dir`. Fails only when the
/// directory cannot be listed; anything wrong inside it is in `errors`.
pub fn load_dir(dir: &Path) -> Result<LoadedConfig, Error> {
    load_dir_cached(dir, &mut ParseCache::default())
}

/// Files parsed cleanly by an earlier load, by name, with the stamp they
/// had then. A file whose stamp (size, mtime, inode) is unchanged is not
/// read or parsed again: with thousands of files, parsing every one on
/// every change was most of a reload. Files with errors are never kept,
/// so their errors are always reported afresh.
#[derive(Debug, Default)]
pub struct ParseCache {
    files: HashMap<String, (FileStamp, ParsedFiles)>,
}

impl ParseCache {
    /// Files currently kept.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// [`load_dir`], parsing only the files that changed since `cache` saw them.
pub fn load_dir_cached(dir: &Path, cache: &mut ParseCache) -> Result<LoadedConfig, Error> {
    let files = list_config_files(dir).map_err(|source| Error::ConfigDir {
        dir: dir.to_path_buf(),
        source,
    })?;
    let mut parsed = ParsedFiles::default();
    let mut kept = HashMap::with_capacity(files.len());
    for (name, path) in files {
        // Stamped before reading: a write racing the read changes the stamp
        // seen by the next load.
        let stamp = file_stamp(&name, &path);
        if let Some((seen, done)) = cache.files.remove(&name)
            && stamp.unreadable.is_none()
            && seen == stamp
        {
            parsed.documents.extend(done.documents.iter().cloned());
            parsed.warnings.extend(done.warnings.iter().cloned());
            kept.insert(name, (seen, done));
            continue;
        }
        let mut one = ParsedFiles::default();
        match fs::read(&path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => parse_file(&name, &text, &mut one),
                Err(err) => one.errors.push(Error::ConfigFile {
                    file: name.clone(),
                    reason: format!("not UTF-8 text ({})", err.utf8_error()),
                }),
            },
            Err(err) => one.errors.push(Error::ConfigFile {
                file: name.clone(),
                reason: err.to_string(),
            }),
        }
        parsed.documents.extend(one.documents.iter().cloned());
        parsed.warnings.extend(one.warnings.iter().cloned());
        if one.errors.is_empty() && stamp.unreadable.is_none() {
            kept.insert(name, (stamp, one));
        } else {
            parsed.errors.append(&mut one.errors);
        }
    }
    // Removed files drop out of the cache with the rest of the old map.
    cache.files = kept;
    let (config, mut errors) = validate::assemble(parsed.documents);
    parsed.errors.append(&mut errors);
    // Stable: errors of one document keep their order.
    parsed
        .errors
        .sort_by(|a, b| a.position().cmp(&b.position()));
    Ok(LoadedConfig {
        config,
        errors: parsed.errors,
        warnings: parsed.warnings,
    })
}
