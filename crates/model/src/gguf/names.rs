//! How llama.cpp names the tensors `transformers` names otherwise: one table both directions use.

/// Module suffixes of a block, `transformers`' then llama.cpp's.
const BLOCK_PARTS: &[(&str, &str)] = &[
    ("input_layernorm.weight", "attn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.q_proj.bias", "attn_q.bias"),
    ("self_attn.k_proj.bias", "attn_k.bias"),
    ("self_attn.v_proj.bias", "attn_v.bias"),
    ("self_attn.q_norm.weight", "attn_q_norm.weight"),
    ("self_attn.k_norm.weight", "attn_k_norm.weight"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
];

const MODEL_PARTS: &[(&str, &str)] = &[
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];

/// llama.cpp's name of the `transformers` parameter `name`, if it has one.
pub(crate) fn gguf_name(name: &str) -> Option<String> {
    if let Some((_, gguf)) = MODEL_PARTS.iter().find(|(hf, _)| *hf == name) {
        return Some(gguf.to_string());
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (_, gguf) = BLOCK_PARTS.iter().find(|(hf, _)| *hf == part)?;
    Some(format!("blk.{layer}.{gguf}"))
}

/// Whether `name` is a query or key projection (llama.cpp interleaves a Llama's rows).
pub(crate) fn rotated_projection(name: &str) -> Option<RotatedProjection> {
    if name.ends_with("self_attn.q_proj.weight") {
        Some(RotatedProjection::Query)
    } else if name.ends_with("self_attn.k_proj.weight") {
        Some(RotatedProjection::Key)
    } else {
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RotatedProjection {
    Query,
    Key,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_between_the_two_conventions() {
        assert_eq!(gguf_name("model.layers.12.mlp.down_proj.weight").as_deref(), Some("blk.12.ffn_down.weight"));
        assert_eq!(gguf_name("model.layers.0.self_attn.k_norm.weight").as_deref(), Some("blk.0.attn_k_norm.weight"));
        assert_eq!(gguf_name("lm_head.weight").as_deref(), Some("output.weight"));
        assert_eq!(gguf_name("model.layers.x.mlp.down_proj.weight"), None);
        assert_eq!(gguf_name("model.layers.1.mlp.act_fn"), None);
        assert_eq!(rotated_projection("model.layers.3.self_attn.q_proj.weight"), Some(RotatedProjection::Query));
        assert_eq!(rotated_projection("model.layers.3.self_attn.q_proj.bias"), None);
    }
}
