//! Tool calling on local models: the tools a request offers, the grammar that makes the model's
//! calls well formed, and the reader that turns generated text back into OpenAI's tool calls,
//! whole or as they stream.
//!
//! A call is written the way Hermes, Qwen 2 and 3 and the factory's own template write them:
//! `<tool_call>\n{"name":"NAME","arguments":{...}}\n</tool_call>`, several separated by a
//! newline. The grammar fixes that shape, the function names offered and each function's
//! parameters schema, so every call returned parses and validates: with `tool_choice`
//! `required` or a named function the answer is calls only; with `auto` it is calls or text
//! (text never starts with `<`, so it cannot open a malformed call); with `none` nothing is
//! constrained and nothing is read as a call.

use factory_grammar::{json_in_lark, lark_literal};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::invalid_param;
use crate::service_error::ServiceError;
use factory_engine::Grammar;

/// OpenAI's bound on the tools one request may offer.
pub const MAX_TOOLS: usize = 128;
/// Calls one answer may make in parallel.
pub const MAX_PARALLEL_CALLS: usize = 8;

const OPEN: &str = "<tool_call>\n";
const CLOSE: &str = "\n</tool_call>";
const SEPARATOR: &str = "\n";
/// What a call's JSON starts with before the name, and what comes between name and arguments.
const NAME_PREFIX: &str = "{\"name\":\"";
const ARGUMENTS_PREFIX: &str = "\",\"arguments\":";
/// The end of a call after its arguments: the call object's brace, then the closing tag.
const CALL_END: &str = "}\n</tool_call>";

/// A function the model may call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tool {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub parameters: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    Auto,
    None,
    Required,
    Named(String),
}

/// The tools of a request and how the model may use them.
#[derive(Debug, Clone, PartialEq)]
pub struct Tools {
    pub tools: Vec<Tool>,
    pub choice: ToolChoice,
    pub parallel: bool,
}

/// A call the model made, in OpenAI's terms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    /// The arguments as a JSON text, as OpenAI sends them.
    pub arguments: String,
}

fn function_kind() -> String {
    "function".to_string()
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Tools {
    /// Reads `tools`, `tool_choice` and `parallel_tool_calls` from a request body; none when it
    /// offers no tools. Each problem is refused naming its field.
    pub fn from_request(body: &Value) -> Result<Option<Tools>, ServiceError> {
        let choice = body.get("tool_choice").filter(|c| !c.is_null());
        let Some(offered) = body.get("tools").filter(|t| !t.is_null()) else {
            return match choice {
                Some(_) => Err(invalid_param("tool_choice", "tool_choice needs tools")),
                None => Ok(None),
            };
        };
        let offered = offered.as_array().ok_or_else(|| invalid_param("tools", "tools is a list"))?;
        if offered.is_empty() || offered.len() > MAX_TOOLS {
            return Err(invalid_param("tools", &format!("offer 1 to {MAX_TOOLS} tools")));
        }
        let mut tools = Vec::with_capacity(offered.len());
        for (index, tool) in offered.iter().enumerate() {
            let field = |name: &str| format!("tools[{index}].{name}");
            if tool.get("type").and_then(Value::as_str) != Some("function") {
                return Err(invalid_param(&field("type"), "only function tools are supported"));
            }
            let function = tool.get("function").ok_or_else(|| invalid_param(&field("function"), "missing"))?;
            let name = function.get("name").and_then(Value::as_str).unwrap_or_default();
            if !valid_name(name) {
                return Err(invalid_param(&field("function.name"), "1 to 64 letters, digits, _ or -"));
            }
            if tools.iter().any(|t: &Tool| t.name == name) {
                return Err(invalid_param(&field("function.name"), &format!("{name} is offered twice")));
            }
            let parameters = match function.get("parameters") {
                None | Some(Value::Null) => serde_json::json!({ "type": "object", "properties": {} }),
                Some(parameters @ Value::Object(_)) => parameters.clone(),
                Some(_) => return Err(invalid_param(&field("function.parameters"), "a JSON schema object")),
            };
            let description = function.get("description").and_then(Value::as_str).map(str::to_string);
            tools.push(Tool { name: name.to_string(), description, parameters });
        }
        let choice = match choice {
            None => ToolChoice::Auto,
            Some(Value::String(choice)) => match choice.as_str() {
                "auto" => ToolChoice::Auto,
                "none" => ToolChoice::None,
                "required" => ToolChoice::Required,
                _ => return Err(invalid_param("tool_choice", "give auto, none, required or a function")),
            },
            Some(named) => {
                let name = named.pointer("/function/name").and_then(Value::as_str).unwrap_or_default();
                if !tools.iter().any(|tool| tool.name == name) {
                    let shown: String = name.chars().take(64).collect();
                    return Err(invalid_param("tool_choice", &format!("{shown:?} is not one of the tools")));
                }
                ToolChoice::Named(name.to_string())
            }
        };
        let parallel = match body.get("parallel_tool_calls") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(parallel)) => *parallel,
            Some(_) => return Err(invalid_param("parallel_tool_calls", "true or false")),
        };
        Ok(Some(Tools { tools, choice, parallel }))
    }

    /// The tools as chat templates take them (OpenAI's list: `type` and `function`).
    pub fn for_template(&self) -> Value {
        self.tools.iter().map(|tool| serde_json::json!({ "type": "function", "function": tool })).collect()
    }

    /// Whether the answer may hold calls (to be read out of its text).
    pub fn may_call(&self) -> bool {
        self.choice != ToolChoice::None
    }

    /// The grammar the answer must follow, given the one `response_format` asks of a text
    /// answer; none when the model may write anything.
    pub fn grammar(&self, text: Option<&Grammar>) -> Option<Grammar> {
        let callable: Vec<&Tool> = match &self.choice {
            ToolChoice::None => return text.cloned(),
            ToolChoice::Named(name) => self.tools.iter().filter(|tool| &tool.name == name).collect(),
            ToolChoice::Auto | ToolChoice::Required => self.tools.iter().collect(),
        };
        let mut lark = String::new();
        let mut functions = Vec::with_capacity(callable.len());
        for (index, tool) in callable.iter().enumerate() {
            let head = format!("{NAME_PREFIX}{}{ARGUMENTS_PREFIX}", tool.name);
            lark.push_str(&format!(
                "f{index}: {} {} {}\n",
                lark_literal(&head),
                json_in_lark(&tool.parameters),
                lark_literal("}")
            ));
            functions.push(format!("f{index}"));
        }
        lark.push_str(&format!("call: {} ({}) {}\n", lark_literal(OPEN), functions.join(" | "), lark_literal(CLOSE)));
        // At most MAX_PARALLEL_CALLS calls, each further one optional: call ("\n" call (...)?)?
        let many = self.parallel && !matches!(self.choice, ToolChoice::Named(_));
        let mut calls = "call".to_string();
        if many {
            for _ in 1..MAX_PARALLEL_CALLS {
                calls = format!("call ({} {calls})?", lark_literal(SEPARATOR));
            }
        }
        lark.push_str(&format!("calls: {calls}\n"));
        // A text answer cannot start with `<`, so it cannot open a call the grammar did not shape.
        match (&self.choice, text) {
            (ToolChoice::Auto, None | Some(Grammar::Lark(_))) => {
                lark.push_str("start: calls | TEXT\nTEXT: /[^<][\\s\\S]*/\n")
            }
            (ToolChoice::Auto, Some(Grammar::JsonObject)) => {
                let object = serde_json::json!({ "type": "object" });
                lark.push_str(&format!("start: calls | {}\n", json_in_lark(&object)))
            }
            (ToolChoice::Auto, Some(Grammar::JsonSchema(schema))) => {
                lark.push_str(&format!("start: calls | {}\n", json_in_lark(schema)))
            }
            _ => lark.push_str("start: calls\n"),
        }
        Some(Grammar::Lark(lark))
    }
}

/// A piece of an answer read for tool calls.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Content(String),
    /// A call begins: its index among the answer's calls, its id and the function's name.
    CallStarted {
        index: usize,
        id: String,
        name: String,
    },
    /// More of a call's arguments text.
    Arguments {
        index: usize,
        fragment: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Reading {
    /// Nothing yet: the first character says whether the answer is text or calls.
    Undecided,
    Content,
    /// Waiting for a call's opening through the name (at `cursor`).
    CallHead,
    /// In a call's arguments, which start at `start`; `sent` bytes of them were given out.
    Arguments {
        start: usize,
        sent: usize,
    },
    /// After a call: a separator and another call, or the end.
    Between,
}

/// Reads generated text, as it arrives, into content and tool calls.
#[derive(Debug)]
pub struct CallReader {
    reading: Reading,
    buffer: String,
    cursor: usize,
    pub calls: Vec<ToolCall>,
}

impl Default for CallReader {
    fn default() -> Self {
        CallReader { reading: Reading::Undecided, buffer: String::new(), cursor: 0, calls: Vec::new() }
    }
}

impl CallReader {
    /// The pieces `text` completes.
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        let mut pieces = Vec::new();
        if self.reading == Reading::Content {
            if !text.is_empty() {
                pieces.push(Piece::Content(text.to_string()));
            }
            return pieces;
        }
        self.buffer.push_str(text);
        loop {
            let rest = &self.buffer[self.cursor..];
            match self.reading {
                Reading::Undecided => match rest.chars().next() {
                    None => return pieces,
                    Some('<') => self.reading = Reading::CallHead,
                    Some(_) => {
                        self.reading = Reading::Content;
                        pieces.push(Piece::Content(std::mem::take(&mut self.buffer)));
                        return pieces;
                    }
                },
                Reading::Content => return pieces,
                Reading::CallHead => {
                    let head = format!("{OPEN}{NAME_PREFIX}");
                    if rest.len() < head.len() || !rest.starts_with(&head) {
                        return pieces;
                    }
                    let after_head = &rest[head.len()..];
                    let Some(name_end) = after_head.find(ARGUMENTS_PREFIX) else { return pieces };
                    let name = after_head[..name_end].to_string();
                    let index = self.calls.len();
                    let id = format!("call_{}", &uuid::Uuid::new_v4().simple().to_string()[..24]);
                    self.calls.push(ToolCall {
                        id: id.clone(),
                        kind: function_kind(),
                        function: FunctionCall { name: name.clone(), arguments: String::new() },
                    });
                    pieces.push(Piece::CallStarted { index, id, name });
                    let start = self.cursor + head.len() + name_end + ARGUMENTS_PREFIX.len();
                    self.reading = Reading::Arguments { start, sent: 0 };
                }
                Reading::Arguments { start, sent } => {
                    let arguments = &self.buffer[start..];
                    // A compact JSON text holds no raw newline, so the first "}\n</tool_call>"
                    // after the arguments ends the call.
                    let (ready, ended) = match arguments.find(CALL_END) {
                        Some(end) => (end, true),
                        None => (safe_end(arguments, arguments.len().saturating_sub(CALL_END.len() - 1)), false),
                    };
                    if ready > sent {
                        let fragment = arguments[sent..ready].to_string();
                        let index = self.calls.len() - 1;
                        if let Some(call) = self.calls.last_mut() {
                            call.function.arguments.push_str(&fragment);
                        }
                        pieces.push(Piece::Arguments { index, fragment });
                    }
                    if !ended {
                        self.reading = Reading::Arguments { start, sent: ready.max(sent) };
                        return pieces;
                    }
                    self.cursor = start + ready + CALL_END.len();
                    self.reading = Reading::Between;
                }
                Reading::Between => {
                    if rest.len() < SEPARATOR.len() {
                        return pieces;
                    }
                    if !rest.starts_with(SEPARATOR) {
                        // Not the grammar's shape (an unconstrained model): the rest is text.
                        let text = rest.to_string();
                        self.cursor = self.buffer.len();
                        self.reading = Reading::Content;
                        pieces.push(Piece::Content(text));
                        return pieces;
                    }
                    self.cursor += SEPARATOR.len();
                    self.reading = Reading::CallHead;
                }
            }
        }
    }

    /// What is left when the answer ends: the held-back end of a cut-off call's arguments, or
    /// text that never became a call.
    pub fn finish(&mut self) -> Vec<Piece> {
        let mut pieces = Vec::new();
        match self.reading {
            Reading::Arguments { start, sent } if self.buffer.len() > start + sent => {
                let fragment = self.buffer[start + sent..].to_string();
                let index = self.calls.len() - 1;
                if let Some(call) = self.calls.last_mut() {
                    call.function.arguments.push_str(&fragment);
                }
                pieces.push(Piece::Arguments { index, fragment });
            }
            Reading::Undecided | Reading::CallHead if self.buffer.len() > self.cursor => {
                pieces.push(Piece::Content(self.buffer[self.cursor..].to_string()));
            }
            _ => {}
        }
        self.cursor = self.buffer.len();
        self.reading = Reading::Content;
        pieces
    }
}

/// The largest char boundary of `text` at or below `at`.
fn safe_end(text: &str, mut at: usize) -> usize {
    while at > 0 && !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// Reads a whole answer: its text (none when it is only calls) and its calls.
#[cfg(test)]
fn read_whole(text: &str) -> (Option<String>, Vec<ToolCall>) {
    let mut reader = CallReader::default();
    let mut pieces = reader.push(text);
    pieces.extend(reader.finish());
    let content: String = pieces
        .into_iter()
        .filter_map(|piece| match piece {
            Piece::Content(text) => Some(text),
            _ => None,
        })
        .collect();
    let content = (!content.is_empty() || reader.calls.is_empty()).then_some(content);
    (content, reader.calls)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools(choice: Value, parallel: bool) -> Tools {
        let body = serde_json::json!({
            "tools": [
                { "type": "function", "function": { "name": "get_weather", "parameters": {
                    "type": "object", "properties": { "city": { "type": "string" } }, "required": ["city"] } } },
                { "type": "function", "function": { "name": "add", "description": "Adds." } },
            ],
            "tool_choice": choice,
            "parallel_tool_calls": parallel,
        });
        Tools::from_request(&body).unwrap_or_else(|e| panic!("{}", e.message)).unwrap_or_else(|| panic!("no tools"))
    }

    #[test]
    fn calls_stream_in_any_split_and_read_whole_alike() {
        let text = "<tool_call>\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Köln }\"}}\n</tool_call>\n\
                    <tool_call>\n{\"name\":\"add\",\"arguments\":{}}\n</tool_call>";
        let (content, calls) = read_whole(text);
        assert_eq!(content, None);
        assert_eq!(calls.len(), 2);
        assert_eq!(
            (calls[0].function.name.as_str(), calls[0].function.arguments.as_str()),
            ("get_weather", "{\"city\":\"Köln }\"}")
        );
        assert_eq!((calls[1].function.name.as_str(), calls[1].function.arguments.as_str()), ("add", "{}"));
        for step in 1..7 {
            let mut reader = CallReader::default();
            let mut pieces = Vec::new();
            let chars: Vec<char> = text.chars().collect();
            for chunk in chars.chunks(step) {
                pieces.extend(reader.push(&chunk.iter().collect::<String>()));
            }
            pieces.extend(reader.finish());
            let mut arguments = [String::new(), String::new()];
            let mut names = Vec::new();
            for piece in pieces {
                match piece {
                    Piece::CallStarted { index, name, .. } => names.push((index, name)),
                    Piece::Arguments { index, fragment } => arguments[index].push_str(&fragment),
                    Piece::Content(text) => panic!("content {text:?}"),
                }
            }
            assert_eq!(names, vec![(0, "get_weather".to_string()), (1, "add".to_string())]);
            assert_eq!(arguments[0], calls[0].function.arguments, "split every {step} chars");
            assert_eq!(arguments[1], "{}");
        }
        assert_eq!(read_whole("Sunny."), (Some("Sunny.".to_string()), vec![]));
    }

    #[test]
    fn choices_shape_the_grammar_and_bad_requests_name_their_field() {
        let Some(Grammar::Lark(auto)) = tools(serde_json::json!("auto"), true).grammar(None) else { panic!() };
        assert!(auto.contains("start: calls | TEXT") && auto.contains("f1"), "{auto}");
        let Some(Grammar::Lark(named)) =
            tools(serde_json::json!({ "type": "function", "function": { "name": "add" } }), true).grammar(None)
        else {
            panic!()
        };
        assert!(
            named.contains("\\\"add\\\"") && !named.contains("get_weather") && named.contains("calls: call\n"),
            "{named}"
        );
        assert_eq!(tools(serde_json::json!("none"), true).grammar(None), None);
        let refused = |body: Value| Tools::from_request(&body).err().and_then(|e| e.param).unwrap_or_default();
        let tool = serde_json::json!({ "type": "function", "function": { "name": "f" } });
        assert_eq!(refused(serde_json::json!({ "tool_choice": "auto" })), "tool_choice");
        assert_eq!(refused(serde_json::json!({ "tools": [tool, tool] })), "tools[1].function.name");
        assert_eq!(refused(serde_json::json!({ "tools": [{ "type": "code" }] })), "tools[0].type");
        assert_eq!(
            refused(serde_json::json!({ "tools": [tool], "tool_choice": { "function": { "name": "g" } } })),
            "tool_choice"
        );
        assert_eq!(
            refused(serde_json::json!({ "tools": [tool], "parallel_tool_calls": "yes" })),
            "parallel_tool_calls"
        );
    }
}
