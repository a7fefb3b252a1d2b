//! Reading the program interpreter out of an ELF executable.
//!
//! The runtime execs the shim on the node itself, outside any image. A k3s
//! node has no dynamic loader, so a shim that names one (a `PT_INTERP`
//! program header) fails every pod there with "no such file or directory".
//! The installer reads the program headers first and refuses such a shim.

use std::path::PathBuf;

const MAGIC: &[u8; 4] = b"\x7fELF";
const CLASS_32: u8 = 1;
const CLASS_64: u8 = 2;
const DATA_LITTLE: u8 = 1;
const DATA_BIG: u8 = 2;
const PT_INTERP: u32 = 3;

/// Why a file cannot be read as an ELF executable.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("{path}: not an ELF executable")]
    NotElf { path: PathBuf },
    #[error("{path}: ELF header or program header table is truncated")]
    Truncated { path: PathBuf },
}

/// Field widths and byte order of one ELF file.
#[derive(Clone, Copy)]
struct Format {
    wide: bool,
    little: bool,
}

impl Format {
    fn u16_at(self, bytes: &[u8], at: usize) -> Option<u16> {
        let b: [u8; 2] = bytes.get(at..at + 2)?.try_into().ok()?;
        Some(if self.little {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        })
    }

    fn u32_at(self, bytes: &[u8], at: usize) -> Option<u32> {
        let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        Some(if self.little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    }

    /// An address-sized field (`Elf32_Off`/`Elf64_Off`, `..._Xword`).
    fn word_at(self, bytes: &[u8], at: usize) -> Option<usize> {
        if !self.wide {
            return usize::try_from(self.u32_at(bytes, at)?).ok();
        }
        let b: [u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
        let value = if self.little {
            u64::from_le_bytes(b)
        } else {
            u64::from_be_bytes(b)
        };
        usize::try_from(value).ok()
    }
}

/// The program interpreter `bytes` (the contents of `path`) asks for, or
/// `None` for a statically linked executable.
pub fn interpreter(path: &std::path::Path, bytes: &[u8]) -> Result<Option<String>, ElfError> {
    let not_elf = || ElfError::NotElf {
        path: path.to_path_buf(),
    };
    let truncated = || ElfError::Truncated {
        path: path.to_path_buf(),
    };
    if bytes.get(..4) != Some(MAGIC.as_slice()) {
        return Err(not_elf());
    }
    let wide = match bytes.get(4) {
        Some(&CLASS_32) => false,
        Some(&CLASS_64) => true,
        _ => return Err(not_elf()),
    };
    let little = match bytes.get(5) {
        Some(&DATA_LITTLE) => true,
        Some(&DATA_BIG) => false,
        _ => return Err(not_elf()),
    };
    let f = Format { wide, little };
    // Offsets of e_phoff, e_phentsize and e_phnum in the file header, and of
    // p_offset and p_filesz in a program header (ELF spec, figure 1-3/2-1).
    let (phoff_at, phentsize_at, phnum_at, p_offset_at, p_filesz_at) = if wide {
        (32, 54, 56, 8, 32)
    } else {
        (28, 42, 44, 4, 16)
    };
    let phoff = f.word_at(bytes, phoff_at).ok_or_else(truncated)?;
    let phentsize = usize::from(f.u16_at(bytes, phentsize_at).ok_or_else(truncated)?);
    let phnum = usize::from(f.u16_at(bytes, phnum_at).ok_or_else(truncated)?);
    for index in 0..phnum {
        let header = index
            .checked_mul(phentsize)
            .and_then(|o| o.checked_add(phoff))
            .ok_or_else(truncated)?;
        if f.u32_at(bytes, header).ok_or_else(truncated)? != PT_INTERP {
            continue;
        }
        let offset = f
            .word_at(bytes, header + p_offset_at)
            .ok_or_else(truncated)?;
        let size = f
            .word_at(bytes, header + p_filesz_at)
            .ok_or_else(truncated)?;
        let raw = offset
            .checked_add(size)
            .and_then(|end| bytes.get(offset..end))
            .ok_or_else(truncated)?;
        let name = raw.split(|&b| b == 0).next().unwrap_or(raw);
        return Ok(Some(String::from_utf8_lossy(name).into_owned()));
    }
    Ok(None)
}

#[cfg(test)]
pub(crate) mod tests;
