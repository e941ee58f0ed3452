//! A reader of Server-Sent Events (the `text/event-stream` format), for the
//! live tail: bytes in, messages out.
//!
//! Only what the tail needs: `event`, `id` and `data` fields, `:` comments
//! skipped, a blank line ending a message. Lines and messages are bounded so
//! that a server that never ends one cannot make the reader hold without limit.

/// One message: its `event` type (`message` when none was given), its `id`,
/// and its `data` lines joined by `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

/// The longest line or message kept: an event's JSON, payload included, is
/// one line.
const MAX_LINE: usize = 32 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SseError {
    #[error("the server sent a line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("the server sent a message longer than {MAX_LINE} bytes")]
    MessageTooLong,
}

/// Feed it the stream's bytes as they come; it hands back each complete message.
#[derive(Default)]
pub struct Reader {
    /// The bytes of the line not yet ended.
    line: Vec<u8>,
    event: Option<String>,
    id: Option<String>,
    data: Option<String>,
}

impl Reader {
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Message>, SseError> {
        let mut messages = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if let Some(message) = self.line_ended(&String::from_utf8_lossy(&line))? {
                    messages.push(message);
                }
            } else {
                if self.line.len() >= MAX_LINE {
                    return Err(SseError::LineTooLong);
                }
                self.line.push(b);
            }
        }
        Ok(messages)
    }

    fn line_ended(&mut self, line: &str) -> Result<Option<Message>, SseError> {
        if line.is_empty() {
            // A message ends; one that had no data is no message.
            let data = self.data.take();
            let event = self.event.take();
            let id = self.id.take();
            return Ok(data.map(|data| Message {
                event: event.unwrap_or_else(|| "message".into()),
                id,
                data,
            }));
        }
        if line.starts_with(':') {
            return Ok(None);
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => self.event = Some(value.to_string()),
            "id" => self.id = Some(value.to_string()),
            "data" => match &mut self.data {
                Some(data) => {
                    if data.len() + 1 + value.len() > MAX_LINE {
                        return Err(SseError::MessageTooLong);
                    }
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            // `retry` and unknown fields mean nothing to the tail.
            _ => {}
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_messages_split_anywhere_and_skips_comments() {
        let stream = "retry: 3000\n: watching\n\n: keep-alive\n\nevent: event\nid: e1\r\n\
                      data: {\"a\":1}\n\nevent: lagged\ndata: {\"missed\": 4}\n\ndata: x\ndata: y\n\n";
        // Every way of cutting the stream gives the same messages.
        for cut in 0..stream.len() {
            let mut reader = Reader::default();
            let mut messages = reader.feed(&stream.as_bytes()[..cut]).unwrap();
            messages.extend(reader.feed(&stream.as_bytes()[cut..]).unwrap());
            assert_eq!(
                messages,
                vec![
                    Message {
                        event: "event".into(),
                        id: Some("e1".into()),
                        data: "{\"a\":1}".into()
                    },
                    Message {
                        event: "lagged".into(),
                        id: None,
                        data: "{\"missed\": 4}".into()
                    },
                    Message {
                        event: "message".into(),
                        id: None,
                        data: "x\ny".into()
                    },
                ],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_message_not_yet_ended_is_kept_for_later() {
        let mut reader = Reader::default();
        assert!(reader.feed(b"event: event\ndata: {}\n").unwrap().is_empty());
        assert_eq!(reader.feed(b"\n").unwrap().len(), 1);
    }

    #[test]
    fn a_message_that_never_ends_is_refused_not_held() {
        let mut reader = Reader::default();
        let line = format!("data: {}\n", "x".repeat(1024 * 1024));
        let mut refused = None;
        for n in 0..40 {
            if let Err(e) = reader.feed(line.as_bytes()) {
                refused = Some((n, e));
                break;
            }
        }
        let (n, e) = refused.expect("a 40 MiB message was held");
        assert!(matches!(e, SseError::MessageTooLong), "{e}");
        // 31 lines of 1 MiB are held; the 32nd would pass 32 MiB.
        assert_eq!(n, 31, "refused once past the bound");
    }
}
