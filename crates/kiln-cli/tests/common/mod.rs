//! Helpers shared by the `kiln` binary's integration tests.
#![allow(dead_code)]

use kiln::engine::Tensor;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

/// A fixture of the library's tests.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../kiln/tests/fixtures")
        .join(name)
}

/// The real all-MiniLM-L6-v2 directory (fetched once by scripts/get-minilm.sh).
pub fn minilm() -> PathBuf {
    let out =
        Command::new(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/get-minilm.sh"))
            .output()
            .expect("run scripts/get-minilm.sh");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A fresh, empty directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A copy of a fixture model with its tensors edited.
pub fn edited_model(
    name: &str,
    from: &str,
    edit: impl FnOnce(&mut BTreeMap<String, Tensor>),
) -> PathBuf {
    let dir = scratch(name);
    for e in std::fs::read_dir(fixture(from)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    let store = kiln::checkpoint::WeightStore::open_dir(&dir).unwrap();
    let mut t: BTreeMap<_, _> = store
        .names()
        .into_iter()
        .filter_map(|n| Some((n.clone(), store.get(&n).ok()?)))
        .collect();
    drop(store);
    edit(&mut t);
    kiln::checkpoint::weights::write_safetensors(
        &dir.join("model.safetensors"),
        &t,
        kiln::checkpoint::SaveDtype::F32,
    )
    .unwrap();
    dir
}

/// Finite weights that overflow on the rows `ids` of the table whose name ends in `suffix`
/// (an embedding table): those rows set huge.
pub fn overflow_on(t: &mut BTreeMap<String, Tensor>, suffix: &str, ids: &[u32]) {
    let name = t.keys().find(|n| n.ends_with(suffix)).unwrap().clone();
    let shape = t[&name].shape().to_vec();
    let mut w = t[&name].data().to_vec();
    for &id in ids {
        let id = id as usize;
        w[id * shape[1]..(id + 1) * shape[1]].fill(3e38);
    }
    t.insert(name, Tensor::new(shape, w).unwrap());
}
