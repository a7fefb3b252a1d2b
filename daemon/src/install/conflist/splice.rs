//! Editing a conflist's `plugins` list in its own text.
//!
//! Appending our entry as text, and removing it the same way, gives back
//! the primary CNI's file byte for byte on uninstall: its formatting, key
//! order and number spelling are never touched. Callers check the result
//! against a parsed edit and fall back to rewriting the document when the
//! text is not shaped as expected.

use std::ops::Range;

/// Where the top-level `plugins` array and its elements are in the text.
#[derive(Debug)]
pub struct PluginsArray {
    /// The byte just after `[`.
    pub inner_start: usize,
    /// Each element's bytes, without surrounding whitespace.
    pub elements: Vec<Range<usize>>,
}

/// Locates the top-level `plugins` array of a JSON object, or `None` when
/// there is none or the text is not shaped as expected.
pub fn plugins_array(text: &str) -> Option<PluginsArray> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(b, i);
        if b.get(i) == Some(&b'}') {
            return None;
        }
        let key_end = skip_string(b, i)?;
        let key: String = serde_json::from_str(text.get(i..key_end)?).ok()?;
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        if key == "plugins" {
            return array_elements(b, i);
        }
        i = skip_ws(b, skip_value(b, i)?);
        match b.get(i) {
            Some(b',') => i += 1,
            _ => return None,
        }
    }
}

/// Appends `element` (compact JSON) after the last element, separated the
/// way the file separates its elements.
pub fn append(text: &str, array: &PluginsArray, element: &str) -> String {
    let mut out = String::with_capacity(text.len() + element.len() + 8);
    match array.elements.as_slice() {
        [] => {
            out.push_str(&text[..array.inner_start]);
            out.push_str(element);
            out.push_str(&text[array.inner_start..]);
        }
        elements => {
            let last = &elements[elements.len() - 1];
            // The whitespace before an element: after the previous comma,
            // or after `[` for the first.
            let gap = match elements {
                [.., before, last] => {
                    let between = &text[before.end..last.start];
                    between.split_once(',').map_or(between, |(_, after)| after)
                }
                [only] => &text[array.inner_start..only.start],
                [] => "",
            };
            out.push_str(&text[..last.end]);
            out.push(',');
            out.push_str(if gap.is_empty() { " " } else { gap });
            out.push_str(element);
            out.push_str(&text[last.end..]);
        }
    }
    out
}

/// Removes the elements at `indices` (ascending) with the separator that
/// [`append`] put before them; `None` when two removals would overlap.
pub fn remove(text: &str, array: &PluginsArray, indices: &[usize]) -> Option<String> {
    let mut cuts: Vec<Range<usize>> = Vec::new();
    for &index in indices {
        let element = array.elements.get(index)?;
        let cut = match index.checked_sub(1).and_then(|p| array.elements.get(p)) {
            Some(previous) => previous.end..element.end,
            None => match array.elements.get(index + 1) {
                Some(next) => element.start..next.start,
                None => element.clone(),
            },
        };
        if cuts.last().is_some_and(|last| last.end > cut.start) {
            return None;
        }
        cuts.push(cut);
    }
    let mut out = String::with_capacity(text.len());
    let mut from = 0;
    for cut in cuts {
        out.push_str(&text[from..cut.start]);
        from = cut.end;
    }
    out.push_str(&text[from..]);
    Some(out)
}

fn array_elements(b: &[u8], open: usize) -> Option<PluginsArray> {
    if b.get(open) != Some(&b'[') {
        return None;
    }
    let inner_start = open + 1;
    let mut elements = Vec::new();
    let mut i = skip_ws(b, inner_start);
    if b.get(i) == Some(&b']') {
        return Some(PluginsArray {
            inner_start,
            elements,
        });
    }
    loop {
        let end = skip_value(b, i)?;
        elements.push(i..end);
        i = skip_ws(b, end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b']') => {
                return Some(PluginsArray {
                    inner_start,
                    elements,
                })
            }
            _ => return None,
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b
        .get(i)
        .is_some_and(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
    {
        i += 1;
    }
    i
}

/// The end of the string starting at `i` (just past its closing quote).
fn skip_string(b: &[u8], mut i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    i += 1;
    loop {
        match b.get(i)? {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
}

/// The end of the value starting at `i`.
fn skip_value(b: &[u8], mut i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => skip_string(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            loop {
                match b.get(i)? {
                    b'"' => {
                        i = skip_string(b, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            let start = i;
            while b
                .get(i)
                .is_some_and(|c| !matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
            {
                i += 1;
            }
            (i > start).then_some(i)
        }
    }
}
