//! Reading raw rows from source files, one at a time, for any input format.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use aigc_crds::dataset::DataSchema;

use super::InputFormat;
use super::validate::{Checked, RawValue, Reject, RejectReason, check_value};
use crate::{Result, WorkerError};

/// Most distinct unknown JSONL keys remembered for the report.
const MAX_IGNORED_NAMES: usize = 100;

/// The files of a source: the file itself, or a directory's regular files in name order
/// (hidden files skipped).
pub fn input_files(source: &Path) -> Result<Vec<PathBuf>> {
    let meta = fs::metadata(source)
        .map_err(|e| WorkerError::io(format!("reading source {}", source.display()), e))?;
    if meta.is_file() {
        return Ok(vec![source.to_path_buf()]);
    }
    let mut files = Vec::new();
    let entries = fs::read_dir(source)
        .map_err(|e| WorkerError::io(format!("listing source {}", source.display()), e))?;
    for entry in entries {
        let entry =
            entry.map_err(|e| WorkerError::io(format!("listing {}", source.display()), e))?;
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if !hidden && entry.file_type().is_ok_and(|t| t.is_file()) {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// One row as read: where it was, how long, and its checked values or why it is rejected.
pub struct Row {
    /// 1-based row number in its file.
    pub number: u64,
    /// Bytes of the row in the source.
    pub bytes: u64,
    /// Values in schema order (one value for text rows), or the first problem found.
    pub values: Result<Vec<Option<Checked>>, Reject>,
}

/// Rows of one source file.
pub struct RowReader<'s> {
    path: PathBuf,
    schema: Option<&'s DataSchema>,
    kind: Kind,
    number: u64,
    ignored: BTreeSet<String>,
}

enum Kind {
    Csv {
        reader: csv::Reader<fs::File>,
        /// For each schema column, its index in the header, if present.
        positions: Vec<Option<usize>>,
        width: usize,
        record: csv::ByteRecord,
    },
    Lines {
        reader: BufReader<fs::File>,
        limit: u64,
        buf: Vec<u8>,
        json: bool,
    },
}

impl<'s> RowReader<'s> {
    /// Open a file; for CSV, read and check its header against the schema.
    pub fn open(
        path: &Path,
        format: InputFormat,
        schema: Option<&'s DataSchema>,
        limit: u64,
    ) -> Result<Self> {
        let file = fs::File::open(path)
            .map_err(|e| WorkerError::io(format!("opening {}", path.display()), e))?;
        let mut ignored = BTreeSet::new();
        let kind = match format {
            InputFormat::Csv => {
                let schema = schema.expect("csv has a schema");
                let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(file);
                let header: Vec<String> = reader
                    .byte_headers()
                    .map_err(|e| {
                        WorkerError::InvalidData(format!(
                            "{}: reading the CSV header: {e}",
                            path.display()
                        ))
                    })?
                    .iter()
                    .map(|h| String::from_utf8_lossy(h).trim().to_owned())
                    .collect();
                let mut positions = Vec::new();
                for column in &schema.columns {
                    let pos = header.iter().position(|h| *h == column.name);
                    if pos.is_none() && column.required {
                        return Err(WorkerError::InvalidData(format!(
                            "{}: required column {:?} is not in the CSV header (the header has {:?})",
                            path.display(),
                            column.name,
                            header
                        )));
                    }
                    positions.push(pos);
                }
                for h in &header {
                    if !schema.columns.iter().any(|c| c.name == *h) {
                        ignored.insert(h.clone());
                    }
                }
                Kind::Csv {
                    reader,
                    positions,
                    width: header.len(),
                    record: csv::ByteRecord::new(),
                }
            }
            InputFormat::Jsonl | InputFormat::Text => Kind::Lines {
                reader: BufReader::with_capacity(1 << 16, file),
                limit,
                buf: Vec::new(),
                json: format == InputFormat::Jsonl,
            },
        };
        Ok(RowReader {
            path: path.to_path_buf(),
            schema,
            kind,
            number: 0,
            ignored,
        })
    }

    /// Source columns that are not in the schema.
    pub fn ignored_columns(&self) -> impl Iterator<Item = &String> {
        self.ignored.iter()
    }

    /// The next row, or `None` at the end of the file. Errors are I/O failures only; bad rows
    /// come back as rejects.
    pub fn next_row(&mut self) -> Result<Option<Row>> {
        let path = &self.path;
        match &mut self.kind {
            Kind::Csv {
                reader,
                positions,
                width,
                record,
            } => {
                let more = reader
                    .read_byte_record(record)
                    .map_err(|e| WorkerError::InvalidData(format!("{}: {e}", path.display())))?;
                if !more {
                    return Ok(None);
                }
                self.number += 1;
                let bytes = (record.as_slice().len() + record.len()) as u64;
                let schema = self.schema.expect("csv has a schema");
                let values = if record.len() != *width {
                    Err(Reject::new(
                        RejectReason::ParseError,
                        format!("row has {} fields; the header has {width}", record.len()),
                    ))
                } else {
                    schema
                        .columns
                        .iter()
                        .zip(positions.iter())
                        .map(|(column, pos)| {
                            let raw = match pos.and_then(|i| record.get(i)) {
                                None => RawValue::Null,
                                Some(field) => {
                                    RawValue::Text(std::str::from_utf8(field).map_err(|_| {
                                        Reject::new(
                                            RejectReason::InvalidUtf8,
                                            format!("column {:?} is not valid UTF-8", column.name),
                                        )
                                    })?)
                                }
                            };
                            check_value(column, raw)
                        })
                        .collect()
                };
                Ok(Some(Row {
                    number: self.number,
                    bytes,
                    values,
                }))
            }
            Kind::Lines {
                reader,
                limit,
                buf,
                json,
            } => loop {
                let Some(length) = read_line_limited(reader, buf, *limit)
                    .map_err(|e| WorkerError::io(format!("reading {}", path.display()), e))?
                else {
                    return Ok(None);
                };
                self.number += 1;
                if *json && buf.iter().all(u8::is_ascii_whitespace) && length == buf.len() as u64 {
                    continue;
                }
                let values = if length > *limit {
                    Err(Reject::new(
                        RejectReason::TooLong,
                        format!("row has {length} bytes; the limit is {limit}"),
                    ))
                } else if *json {
                    json_row(
                        buf,
                        self.schema.expect("jsonl has a schema"),
                        &mut self.ignored,
                    )
                } else {
                    match std::str::from_utf8(buf) {
                        Ok(text) => Ok(vec![Some(Checked {
                            text: text.to_owned(),
                            number: None,
                        })]),
                        Err(_) => Err(Reject::new(
                            RejectReason::InvalidUtf8,
                            "line is not valid UTF-8",
                        )),
                    }
                };
                return Ok(Some(Row {
                    number: self.number,
                    bytes: length,
                    values,
                }));
            },
        }
    }
}

fn json_row(
    line: &[u8],
    schema: &DataSchema,
    ignored: &mut BTreeSet<String>,
) -> Result<Vec<Option<Checked>>, Reject> {
    let value: serde_json::Value = serde_json::from_slice(line).map_err(|e| {
        Reject::new(
            RejectReason::ParseError,
            format!("line is not valid JSON ({e})"),
        )
    })?;
    let serde_json::Value::Object(object) = value else {
        return Err(Reject::new(
            RejectReason::ParseError,
            "line is not a JSON object",
        ));
    };
    if ignored.len() < MAX_IGNORED_NAMES {
        for key in object.keys() {
            if !schema.columns.iter().any(|c| c.name == *key) {
                ignored.insert(key.clone());
            }
        }
    }
    schema
        .columns
        .iter()
        .map(|column| {
            let raw = object
                .get(&column.name)
                .map_or(RawValue::Null, RawValue::Json);
            check_value(column, raw)
        })
        .collect()
}

/// Read one line into `buf` without its line ending, keeping at most `limit` bytes; returns
/// the line's full length (which exceeds `limit` when the rest was skipped), or `None` at EOF.
fn read_line_limited(
    reader: &mut impl BufRead,
    buf: &mut Vec<u8>,
    limit: u64,
) -> std::io::Result<Option<u64>> {
    buf.clear();
    let mut length = 0u64;
    let mut saw_any = false;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        saw_any = true;
        let (piece, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], true),
            None => (chunk, false),
        };
        let room = limit.saturating_add(1).saturating_sub(buf.len() as u64) as usize;
        buf.extend_from_slice(&piece[..piece.len().min(room)]);
        length += piece.len() as u64;
        let consumed = piece.len() + usize::from(done);
        reader.consume(consumed);
        if done {
            break;
        }
    }
    if !saw_any {
        return Ok(None);
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
        length -= 1;
    }
    Ok(Some(length))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_measured_but_not_kept() {
        let data = b"short\r\n0123456789abcdef\nlast";
        let mut r = std::io::Cursor::new(&data[..]);
        let mut buf = Vec::new();
        assert_eq!(read_line_limited(&mut r, &mut buf, 8).unwrap(), Some(5));
        assert_eq!(buf, b"short");
        assert_eq!(read_line_limited(&mut r, &mut buf, 8).unwrap(), Some(16));
        assert!(buf.len() <= 9);
        assert_eq!(read_line_limited(&mut r, &mut buf, 8).unwrap(), Some(4));
        assert_eq!(buf, b"last");
        assert_eq!(read_line_limited(&mut r, &mut buf, 8).unwrap(), None);
    }
}
