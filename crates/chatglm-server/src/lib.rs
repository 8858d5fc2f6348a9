//! chatglm-server
