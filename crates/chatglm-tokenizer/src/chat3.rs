//! ChatGLM3's conversation format, as the official `build_chat_input`
//! (THUDM/chatglm3-6b `tokenization_chatglm.py`) builds it: `[gMASK] sop`,
//! then for every message its role token, the SentencePiece ids of
//! `"{metadata}\n"` and of its content, then the query under its role, then
//! `<|assistant|>`. The role tokens follow the five ChatGLM2 specials
//! (`<|system|>` = n + 5 … `<|observation|>` = n + 8 for n SentencePiece
//! pieces: 64794–64797 with the real tokenizer). Message text is plain
//! SentencePiece: a special token's name inside it is ordinary text.

use crate::ChatGlmTokenizer;

/// Who speaks a ChatGLM3 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    System,
    User,
    Assistant,
    /// A tool's result, sent back to the model.
    Observation,
}

impl Role {
    pub const ALL: [Role; 4] = [Self::System, Self::User, Self::Assistant, Self::Observation];

    /// The official role name (`"system"`, `"user"`, `"assistant"`, `"observation"`).
    pub fn name(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::Observation => "observation",
        }
    }

    /// The role's special token (`<|user|>`, …).
    pub fn token(self) -> &'static str {
        match self {
            Self::System => "<|system|>",
            Self::User => "<|user|>",
            Self::Assistant => "<|assistant|>",
            Self::Observation => "<|observation|>",
        }
    }

    /// From the official role name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }

    fn offset(self) -> u32 {
        5 + match self {
            Self::System => 0,
            Self::User => 1,
            Self::Assistant => 2,
            Self::Observation => 3,
        }
    }
}

/// One message of a ChatGLM3 history, its content already final (a system
/// message's tool list appended by the caller, as the official code does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatMessage<'a> {
    pub role: Role,
    /// The official `metadata` (a tool name after an assistant's call; usually empty).
    pub metadata: &'a str,
    pub content: &'a str,
}

impl ChatGlmTokenizer {
    /// The id of a ChatGLM3 role token.
    pub fn role_id(&self, role: Role) -> u32 {
        self.sp_vocab_size() as u32 + role.offset()
    }

    /// `build_single_message`: the role token, `"{metadata}\n"`, the content.
    pub fn encode_chat3_message(&self, message: &ChatMessage<'_>, ids: &mut Vec<u32>) {
        ids.push(self.role_id(message.role));
        self.sentencepiece().encode_ids(&format!("{}\n", message.metadata), ids);
        self.sentencepiece().encode_ids(message.content, ids);
    }

    /// `build_chat_input(query, history, role)`: the prompt of a ChatGLM3
    /// conversation, ending with `<|assistant|>` for the reply.
    pub fn encode_chat3(&self, history: &[ChatMessage<'_>], query: &str, role: Role) -> Vec<u32> {
        let mut ids = self.prefix_tokens().to_vec();
        for m in history {
            self.encode_chat3_message(m, &mut ids);
        }
        self.encode_chat3_message(&ChatMessage { role, metadata: "", content: query }, &mut ids);
        ids.push(self.role_id(Role::Assistant));
        ids
    }
}
