//! The chat template: the model's own Jinja template (`tokenizer.chat_template` in the
//! GGUF), rendered with minijinja and Python-compatible string methods, so the prompt is
//! exactly what the model was trained on.

use minijinja::{context, Environment, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

impl ChatTemplate {
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| Error::InvalidRequest(format!("the model's chat template does not compile: {e}")))?;
        Ok(Self { env, bos: bos.into(), eos: eos.into() })
    }

    /// The prompt for `messages`, ending with the assistant's turn opened.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String> {
        if messages.is_empty() {
            return Err(Error::InvalidRequest("messages must not be empty".into()));
        }
        let tmpl = self.env.get_template("chat").map_err(|e| Error::InvalidRequest(e.to_string()))?;
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => self.bos,
            eos_token => self.eos,
        })
        .map_err(|e| Error::InvalidRequest(format!("cannot render the chat template: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn chatml_renders_with_and_without_system() -> Result<()> {
        let t = ChatTemplate::new(CHATML, "<|im_start|>", "<|im_end|>")?;
        let with = t.render(&[ChatMessage::new("system", "S"), ChatMessage::new("user", "Hi")])?;
        assert_eq!(with, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
        let without = t.render(&[ChatMessage::new("user", "Hi")])?;
        assert!(without.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"));
        Ok(())
    }

    #[test]
    fn python_string_methods_and_raise_exception_work() -> Result<()> {
        let t = ChatTemplate::new(
            "{% if messages[0]['role'] == 'bad' %}{{ raise_exception('no bad roles') }}{% endif %}{{ messages[0]['content'].strip() }}",
            "",
            "",
        )?;
        assert_eq!(t.render(&[ChatMessage::new("user", "  x  ")])?, "x");
        let err = t.render(&[ChatMessage::new("bad", "x")]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("no bad roles"), "{err}");
        Ok(())
    }

    #[test]
    fn empty_conversation_is_refused() -> Result<()> {
        let t = ChatTemplate::new(CHATML, "", "")?;
        assert!(t.render(&[]).is_err());
        Ok(())
    }
}
