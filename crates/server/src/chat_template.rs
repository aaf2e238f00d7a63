//! Chat templates: Jinja that a model's `tokenizer_config.json` carries, which is to say code
//! written by whoever imported the model. It runs sandboxed: a budget of instructions (fuel)
//! and of nesting, a bound on what it may write, and never on the async workers (callers run
//! [`render`] on the blocking pool). Templates are checked when a model is imported, so a
//! hostile one is refused before anyone can call it.

use std::io::Write;

use serde::Serialize;

/// The largest template accepted; real ones are a few kilobytes.
pub const MAX_TEMPLATE_BYTES: usize = 64 * 1024;
/// Instructions a render may run: a base plus a share per message, generous for every
/// published template (they loop once over the messages) and far below what stalls a core.
const FUEL_BASE: u64 = 100_000;
const FUEL_PER_MESSAGE: u64 = 10_000;
/// Macro and include nesting.
const RECURSION_LIMIT: usize = 32;
/// What a render may write beyond the messages' own bytes (role markers, system prompts).
const OUTPUT_ALLOWANCE: usize = 64 * 1024;

/// Why a template could not render; the message names the limit or the template's error.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateError(pub String);

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Renders `messages` (anything with `role` and `content`) with `template`, as Hugging Face
/// does for generation: `add_generation_prompt` set, an empty `bos_token`. The output may be
/// at most twice the messages' text plus 64 KiB. Blocking: call it off the async workers.
pub fn render<M: Serialize>(
    template: &str,
    messages: &[M],
    tools: Option<&serde_json::Value>,
    text_bytes: usize,
    bos_token: &str,
    eos_token: &str,
) -> Result<String, TemplateError> {
    if template.len() > MAX_TEMPLATE_BYTES {
        return Err(TemplateError(format!("the chat template is over {MAX_TEMPLATE_BYTES} bytes")));
    }
    let mut environment = minijinja::Environment::new();
    environment.set_fuel(Some(FUEL_BASE + FUEL_PER_MESSAGE * messages.len() as u64));
    environment.set_recursion_limit(RECURSION_LIMIT);
    environment.add_template("chat", template).map_err(|e| TemplateError(format!("the chat template: {e}")))?;
    let compiled = environment.get_template("chat").map_err(|e| TemplateError(e.to_string()))?;
    let limit = text_bytes.saturating_mul(2).saturating_add(OUTPUT_ALLOWANCE);
    let mut output = BoundedOutput { bytes: Vec::new(), limit, exceeded: false };
    let context = minijinja::context! {
        messages => messages,
        tools => tools,
        add_generation_prompt => true,
        bos_token => bos_token,
        eos_token => eos_token,
    };
    let rendered = compiled.render_captured_to(context, &mut output);
    if output.exceeded {
        return Err(TemplateError(format!("the chat template wrote more than {limit} bytes")));
    }
    rendered.map_err(|e| match e.kind() {
        minijinja::ErrorKind::OutOfFuel => {
            TemplateError("the chat template ran out of its instruction budget (a loop too long)".to_string())
        }
        _ => TemplateError(format!("the chat template: {e}")),
    })?;
    String::from_utf8(output.bytes).map_err(|_| TemplateError("the chat template wrote invalid UTF-8".to_string()))
}

/// Checks a template at import: it compiles, and renders a short conversation within its
/// budgets. A template that loops without end, nests too deep or writes without bound is
/// refused here rather than on the first call.
pub fn validate(template: &str, eos_token: &str) -> Result<(), TemplateError> {
    #[derive(Serialize)]
    struct Message {
        role: &'static str,
        content: &'static str,
    }
    let conversation = [
        Message { role: "system", content: "You answer briefly." },
        Message { role: "user", content: "Hello there." },
        Message { role: "assistant", content: "Hello." },
        Message { role: "user", content: "What is a template?" },
    ];
    let text_bytes = conversation.iter().map(|m| m.content.len() + m.role.len()).sum();
    render(template, &conversation, None, text_bytes, "<s>", eos_token).map(|_| ())
}

/// A writer that refuses bytes past its limit, so a template cannot fill memory through its
/// output.
struct BoundedOutput {
    bytes: Vec<u8>,
    limit: usize,
    exceeded: bool,
}

impl Write for BoundedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > self.limit {
            self.exceeded = true;
            return Err(std::io::Error::other("output limit"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Message {
        role: String,
        content: String,
    }

    fn user(content: &str) -> Vec<Message> {
        vec![Message { role: "user".into(), content: content.into() }]
    }

    const PLAIN: &str = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}\
                         {% if add_generation_prompt %}<|assistant|>{% endif %}";

    #[test]
    fn an_ordinary_template_renders_and_validates() {
        let rendered = render(PLAIN, &user("Hi"), None, 2, "<s>", "</s>").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rendered, "<|user|>Hi\n<|assistant|>");
        validate(PLAIN, "</s>").unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn the_reviews_nested_loop_runs_out_of_fuel_at_once() {
        // The attack: two nested range(100000) loops blocked every runtime worker.
        let hostile = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
        let started = std::time::Instant::now();
        let error = render(hostile, &user("Hi"), None, 2, "<s>", "</s>").err().unwrap_or_else(|| panic!("it rendered"));
        assert!(error.0.contains("instruction budget"), "{error}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
        assert!(validate(hostile, "</s>").is_err(), "refused at import too");
    }

    #[test]
    fn output_recursion_and_size_are_bounded() {
        let wide = "{% for i in range(1000) %}{{ messages[0].content * 1000 }}{% endfor %}";
        let error =
            render(wide, &user("0123456789"), None, 10, "<s>", "</s>").err().unwrap_or_else(|| panic!("it rendered"));
        assert!(error.0.contains("wrote more than"), "{error}");
        let deep = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}";
        assert!(render(deep, &user("Hi"), None, 2, "<s>", "</s>").is_err());
        assert!(validate(&"x".repeat(MAX_TEMPLATE_BYTES + 1), "</s>").is_err());
        assert!(validate("{% for %}", "</s>").is_err(), "does not compile");
    }
}
