//! What the commands print: aligned tables and `key: value` blocks for people,
//! JSON for scripts. Everything goes to standard output through [`print`],
//! so a closed pipe (`hookrelay events list | head -1`) ends the command
//! quietly instead of panicking.

use std::io::Write;

use serde_json::Value;

use super::client::CliError;

/// Writes `text` to standard output. A reader that went away (broken pipe)
/// is [`Closed`]; the command stops and exits 0.
pub fn print(text: &str) -> Result<(), Closed> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(Closed)
}

/// Standard output could not be written.
#[derive(Debug)]
pub struct Closed(pub std::io::Error);

impl From<Closed> for CliError {
    fn from(Closed(e): Closed) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            CliError::OutputClosed
        } else {
            CliError::Other(format!("cannot write the output: {e}"))
        }
    }
}

/// Prints `value` as indented JSON.
pub fn json(value: &Value) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::Other(format!("cannot print JSON: {e}")))?;
    Ok(print(&format!("{text}\n"))?)
}

/// A value of a JSON object as one cell: strings bare, `null` or absent as
/// `-`, arrays joined by commas, anything else as JSON.
pub fn cell(value: &Value, key: &str) -> String {
    text(value.get(key).unwrap_or(&Value::Null))
}

/// [`cell`] for a value itself.
pub fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "-".into(),
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// `text` on one line, with nothing a terminal would act on: every control
/// character (line breaks, escape sequences' ESC) becomes a space. What the
/// server says is printed through this, so an event name cannot move the
/// cursor or recolour the terminal.
pub fn plain(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `text` cut to at most `max` characters, with `…` when cut; one line.
pub fn preview(text: &str, max: usize) -> String {
    let one_line = plain(text);
    if one_line.chars().count() <= max {
        one_line
    } else {
        let mut cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// Columns aligned with two spaces between them; the last one is not padded.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells.iter().map(|c| plain(c)).collect());
    }

    pub fn render(&self) -> String {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate().take(columns) {
                if i + 1 == columns {
                    line.push_str(cell);
                } else {
                    let pad = widths[i] - cell.chars().count();
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `key: value` lines for the fields of `value` named in `keys`, aligned.
pub fn fields(value: &Value, keys: &[&str]) -> String {
    let width = keys.iter().map(|k| k.len()).max().unwrap_or(0);
    keys.iter()
        .map(|k| format!("{k:width$}  {}\n", plain(&cell(value, k))))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn aligns_columns_and_shows_missing_values_as_a_dash() {
        let mut table = Table::new(&["ID", "EVENT", "TENANT"]);
        let rows = [
            json!({"id": "a", "event": "jira:issue_created", "tenant": "t1"}),
            json!({"id": "bbbb", "event": "x", "tenant": null}),
        ];
        for r in &rows {
            table.row(vec![cell(r, "id"), cell(r, "event"), cell(r, "tenant")]);
        }
        assert_eq!(
            table.render(),
            "ID    EVENT               TENANT\n\
             a     jira:issue_created  t1\n\
             bbbb  x                   -\n"
        );
    }

    #[test]
    fn cells_and_previews() {
        let v = json!({"events": ["a", "b"], "n": 3, "none": [], "on": true});
        assert_eq!(cell(&v, "events"), "a,b");
        assert_eq!(cell(&v, "n"), "3");
        assert_eq!(cell(&v, "none"), "-");
        assert_eq!(cell(&v, "missing"), "-");
        assert_eq!(cell(&v, "on"), "true");
        assert_eq!(preview("abc\ndef", 10), "abc def");
        assert_eq!(preview("abcdefghij", 5), "abcd…");
        assert_eq!(plain("jira:\u{1b}[2Jissue\u{7}"), "jira: [2Jissue ");
        let mut table = Table::new(&["EVENT"]);
        table.row(vec!["a\u{1b}]0;title\u{7}b".into()]);
        assert_eq!(table.render(), "EVENT\na ]0;title b\n");
        assert_eq!(
            fields(&json!({"event": "x\ry"}), &["event"]),
            "event  x y\n"
        );
    }
}
