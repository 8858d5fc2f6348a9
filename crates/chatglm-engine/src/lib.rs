//! chatglm-engine
