//! CLIP BPE tokenisation into fixed windows (CHECKPOINTS.md §3.6): BOS 49406, up to
//! `window − 2` prompt tokens, EOS 49407, then padding — EOS for CLIP-L (HF tokenizer
//! `pad_token = <|endoftext|>`), 0 for OpenCLIP towers (open_clip `tokenize` pads with 0).
//! The vocabulary is OpenAI's `bpe_simple_vocab_16e6`, shared by every SD text encoder.

use instant_clip_tokenizer::{Token, Tokenizer};

/// Start-of-text id of the CLIP vocabulary.
pub(crate) const BOS: u32 = 49406;
/// End-of-text id of the CLIP vocabulary.
pub(crate) const EOS: u32 = 49407;

/// One prompt as a window of ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Window {
    pub ids: Vec<u32>,
    /// The prompt had more tokens than fit and was cut.
    pub truncated: bool,
}

pub(crate) struct ClipTokenizer {
    inner: Tokenizer,
}

impl ClipTokenizer {
    pub(crate) fn new() -> Self {
        Self {
            inner: Tokenizer::new(),
        }
    }

    /// `prompt` as exactly `len` ids (at least 2: BOS and EOS).
    pub(crate) fn window(&self, prompt: &str, len: usize, pad: u32) -> Window {
        let len = len.max(2);
        let mut tokens: Vec<Token> = Vec::new();
        self.inner.encode(prompt, &mut tokens);
        let room = len - 2;
        let truncated = tokens.len() > room;
        let mut ids = Vec::with_capacity(len);
        ids.push(BOS);
        ids.extend(tokens.iter().take(room).map(|t| u32::from(t.to_u16())));
        ids.push(EOS);
        ids.resize(len, pad);
        Window { ids, truncated }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_prompt_is_wrapped_in_bos_eos_and_padded_with_the_pad_id() {
        let t = ClipTokenizer::new();
        let w = t.window("Hi there", 77, EOS);
        // Ids of "hi there" in the CLIP vocabulary (instant-clip-tokenizer's documented example).
        assert_eq!(&w.ids[..4], &[BOS, 1883, 997, EOS]);
        assert!(w.ids[4..].iter().all(|&id| id == EOS));
        assert_eq!(w.ids.len(), 77);
        assert!(!w.truncated);
        let w = t.window("Hi there", 77, 0);
        assert!(w.ids[4..].iter().all(|&id| id == 0));
    }

    #[test]
    fn long_prompt_is_cut_to_75_tokens_and_reported_truncated() {
        let t = ClipTokenizer::new();
        let prompt = "cat ".repeat(100);
        let w = t.window(&prompt, 77, 0);
        assert_eq!(w.ids.len(), 77);
        assert!(w.truncated);
        assert_eq!(w.ids[0], BOS);
        assert_eq!(w.ids[76], EOS);
        assert!(w.ids[1..76].iter().all(|&id| id == w.ids[1]));
    }
}
