use std::path::Path;

use super::*;

/// A minimal 64-bit little-endian executable: the file header and one
/// program header, `PT_INTERP` naming `interp` when given, else `PT_LOAD`.
pub(crate) fn tiny_elf(interp: Option<&str>) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let mut out = vec![0u8; EHDR + PHDR];
    out[..4].copy_from_slice(MAGIC);
    out[4] = CLASS_64;
    out[5] = DATA_LITTLE;
    out[6] = 1; // EI_VERSION
    out[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    out[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    out[32..40].copy_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    out[52..54].copy_from_slice(&(EHDR as u16).to_le_bytes()); // e_ehsize
    out[54..56].copy_from_slice(&(PHDR as u16).to_le_bytes()); // e_phentsize
    out[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
    let (p_type, offset, size) = match interp {
        Some(name) => {
            let offset = out.len();
            out.extend_from_slice(name.as_bytes());
            out.push(0);
            (PT_INTERP, offset, name.len() + 1)
        }
        None => (1, 0, out.len()),
    };
    let ph = EHDR;
    out[ph..ph + 4].copy_from_slice(&p_type.to_le_bytes());
    out[ph + 8..ph + 16].copy_from_slice(&(offset as u64).to_le_bytes());
    out[ph + 32..ph + 40].copy_from_slice(&(size as u64).to_le_bytes());
    out
}

#[test]
fn a_dynamically_linked_system_binary_names_its_loader() {
    let path = Path::new("/bin/true");
    let bytes = tailnet_testbed::require!(std::fs::read(path)
        .map_err(|_| { tailnet_testbed::Missing::new("no /bin/true", "install coreutils") }));
    let interp = interpreter(path, &bytes).unwrap();
    let interp = interp.expect("/bin/true is dynamically linked");
    assert!(interp.starts_with('/'), "{interp}");
    assert!(Path::new(&interp).file_name().is_some());
}

#[test]
fn constructed_binaries_are_told_apart() {
    let path = Path::new("shim");
    assert_eq!(interpreter(path, &tiny_elf(None)).unwrap(), None);
    assert_eq!(
        interpreter(path, &tiny_elf(Some("/lib/ld-musl-x86_64.so.1"))).unwrap(),
        Some("/lib/ld-musl-x86_64.so.1".to_string())
    );
}

#[test]
fn the_static_shim_build_has_no_interpreter() {
    // Built by scripts/build-shim.sh; absent in a plain `cargo test`.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let shim = target.join("static/tailnet-cni");
    let bytes = tailnet_testbed::require!(std::fs::read(&shim).map_err(|_| {
        tailnet_testbed::Missing::new(
            format!("no static shim at {}", shim.display()),
            "build it with scripts/build-shim.sh",
        )
    }));
    assert_eq!(interpreter(&shim, &bytes).unwrap(), None);
}

#[test]
fn garbage_and_truncated_files_are_refused() {
    let path = Path::new("shim");
    assert!(matches!(
        interpreter(path, b"#!/bin/sh\n"),
        Err(ElfError::NotElf { .. })
    ));
    assert!(matches!(
        interpreter(path, b"\x7fELF shim"),
        Err(ElfError::NotElf { .. })
    ));
    let whole = tiny_elf(Some("/lib64/ld-linux-x86-64.so.2"));
    assert!(matches!(
        interpreter(path, &whole[..whole.len() - 40]),
        Err(ElfError::Truncated { .. })
    ));
    assert!(matches!(
        interpreter(path, &whole[..60]),
        Err(ElfError::Truncated { .. })
    ));
}
