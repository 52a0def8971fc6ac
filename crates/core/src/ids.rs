//! The layer-ids grammar users type: comma-separated ids and inclusive ranges, whitespace allowed
//! (`"1,2,10-15, 20"`), and its canonical form (`"1-2,10-15,20"`) for showing a selection.

use crate::error::{Error, Result};
use std::collections::BTreeSet;

/// Parses `input` into a set of layer ids, each checked against `num_layers`.
pub fn parse_layer_ids(input: &str, num_layers: usize) -> Result<BTreeSet<usize>> {
    let bad = |message: String| Error::BadLayerIds {
        input: input.to_string(),
        message,
    };
    if input.trim().is_empty() {
        return Err(bad("no layer ids given; write ids and ranges like \"1,2,10-15\"".into()));
    }
    let mut ids = BTreeSet::new();
    for (pos, raw) in input.split(',').enumerate() {
        let token = raw.trim();
        if token.is_empty() {
            return Err(bad(format!(
                "empty entry #{} in {input:?}; remove the extra comma",
                pos + 1
            )));
        }
        let (lo, hi) = match token.split_once('-') {
            Some(("", _)) => {
                return Err(bad(format!(
                    "{token:?} is negative; layer ids start at 0 (valid 0-{})",
                    num_layers.saturating_sub(1)
                )))
            }
            Some((a, b)) => (parse_id(a.trim(), token, input)?, parse_id(b.trim(), token, input)?),
            None => {
                let id = parse_id(token, token, input)?;
                (id, id)
            }
        };
        if lo > hi {
            return Err(bad(format!("range {token:?} runs backwards; write {hi}-{lo}")));
        }
        for id in [lo, hi] {
            if id >= num_layers as u64 {
                return Err(Error::LayerOutOfRange {
                    id: id.min(i64::MAX as u64) as i64,
                    num_layers,
                });
            }
        }
        ids.extend(lo as usize..=hi as usize);
    }
    Ok(ids)
}

fn parse_id(text: &str, token: &str, input: &str) -> Result<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        let message = if token == text {
            format!("{token:?} is not a layer id; use whole numbers and ranges like \"1,2,10-15\"")
        } else {
            format!("{token:?} is not a range of layer ids; write a range as \"10-15\"")
        };
        return Err(Error::BadLayerIds {
            input: input.to_string(),
            message,
        });
    }
    text.parse().map_err(|_| Error::BadLayerIds {
        input: input.to_string(),
        message: format!("{text:?} is too large a layer id"),
    })
}

/// Canonical text for a set of ids: ascending, runs of two or more written as ranges.
pub fn format_layer_ids<'a>(ids: impl IntoIterator<Item = &'a usize>) -> String {
    let sorted: BTreeSet<usize> = ids.into_iter().copied().collect();
    let mut parts = Vec::new();
    let mut iter = sorted.into_iter().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end = iter.next().expect("peeked");
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(s: &str, n: usize) -> Vec<usize> {
        parse_layer_ids(s, n).unwrap().into_iter().collect()
    }

    fn err(s: &str, n: usize) -> String {
        parse_layer_ids(s, n).unwrap_err().to_string()
    }

    #[test]
    fn grammar() {
        assert_eq!(ids("1,2,10-15, 20", 32), vec![1, 2, 10, 11, 12, 13, 14, 15, 20]);
        assert_eq!(ids(" 3 , 1,1 ", 4), vec![1, 3]);
        assert_eq!(ids("2 - 3", 4), vec![2, 3]);
        assert_eq!(ids("0-0", 4), vec![0]);
    }

    #[test]
    fn errors_name_the_problem() {
        assert!(err("1,,x", 4).contains("empty entry #2"));
        assert!(err("1,x", 4).contains("\"x\" is not a layer id"));
        assert!(err("5-2", 8).contains("runs backwards; write 2-5"));
        assert!(err("-1", 4).contains("negative"));
        assert!(err("", 4).contains("no layer ids"));
        assert!(err("1-", 4).contains("not a range"));
        let e = err("4", 4);
        assert!(
            e.contains("layer 4 is out of range") && e.contains("4 layers") && e.contains("0-3"),
            "{e}"
        );
        assert!(err("99999999999999999999999", 4).contains("too large"));
    }

    #[test]
    fn canonical_form_round_trips() {
        assert_eq!(format_layer_ids(&[20, 1, 2, 10, 11, 12, 5]), "1-2,5,10-12,20");
        assert_eq!(format_layer_ids(&[]), "");
        for text in ["0-3", "1,3,5", "0,2-4,7"] {
            assert_eq!(format_layer_ids(&parse_layer_ids(text, 8).unwrap()), text);
        }
    }
}
