//! llama.cpp's vocabulary rules shared by every loader: token attributes, the special
//! ids it detects by their text, and the end-of-generation set (`llama_vocab::impl::load`).

// Token attributes, bit-for-bit llama.cpp's `llama_token_attr`.
pub(crate) const ATTR_UNKNOWN: u32 = 1 << 0;
pub(crate) const ATTR_UNUSED: u32 = 1 << 1;
pub(crate) const ATTR_NORMAL: u32 = 1 << 2;
pub(crate) const ATTR_CONTROL: u32 = 1 << 3;
pub(crate) const ATTR_USER_DEFINED: u32 = 1 << 4;
pub(crate) const ATTR_BYTE: u32 = 1 << 5;

/// llama.cpp's EOT auto-detection candidates (`special_eot_id` when the file has none).
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
const FIM_PRE_TEXTS: &[&str] =
    &["<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<PRE>", "<|code_prefix|>", "<|prefix|>"];
const FIM_SUF_TEXTS: &[&str] =
    &["<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<SUF>", "<|code_suffix|>", "<|suffix|>"];
const FIM_MID_TEXTS: &[&str] =
    &["<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<MID>", "<|code_middle|>", "<|middle|>"];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];
/// llama.cpp's list of texts that always end generation.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
];

/// The special token ids a vocabulary declares (or llama.cpp detects).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SpecialIds {
    pub(crate) bos: Option<u32>,
    pub(crate) eos: Option<u32>,
    pub(crate) eot: Option<u32>,
    pub(crate) eom: Option<u32>,
    pub(crate) fim_pre: Option<u32>,
    pub(crate) fim_suf: Option<u32>,
    pub(crate) fim_mid: Option<u32>,
    pub(crate) fim_pad: Option<u32>,
    pub(crate) fim_rep: Option<u32>,
    pub(crate) fim_sep: Option<u32>,
}

/// Applies llama.cpp's text-based rules to the declared ids and the attributes, and
/// returns the end-of-generation set (sorted, no duplicates). `eligible(id)` says which
/// tokens the text rules may touch: every token for a GGUF file; only the added tokens of
/// a Hugging Face tokenizer.json (where an ordinary token that happens to read `</s>` is
/// not special).
pub(crate) fn llama_cpp_rules(
    texts: &[String],
    attrs: &mut [u32],
    ids: &mut SpecialIds,
    eligible: &dyn Fn(usize) -> bool,
) -> Vec<u32> {
    // llama.cpp auto-detects these by their text and forces them to be control tokens.
    // (It walks a hash map; we walk ids in order. Only the choice between several
    // candidates for the same role could differ, and that is not observable here: all
    // candidates end generation either way.)
    for (id, text) in texts.iter().enumerate() {
        if !eligible(id) {
            continue;
        }
        for (slot, list) in [
            (&mut ids.eot, EOT_TEXTS),
            (&mut ids.eom, EOM_TEXTS),
            (&mut ids.fim_pre, FIM_PRE_TEXTS),
            (&mut ids.fim_suf, FIM_SUF_TEXTS),
            (&mut ids.fim_mid, FIM_MID_TEXTS),
            (&mut ids.fim_pad, FIM_PAD_TEXTS),
            (&mut ids.fim_rep, FIM_REP_TEXTS),
            (&mut ids.fim_sep, FIM_SEP_TEXTS),
        ] {
            if slot.is_none() && list.contains(&text.as_str()) {
                *slot = Some(id as u32);
                attrs[id] |= ATTR_CONTROL;
            }
        }
    }
    // Control tokens named "unused" are unused.
    for (id, text) in texts.iter().enumerate() {
        if attrs[id] & ATTR_CONTROL != 0 && text.contains("unused") {
            attrs[id] |= ATTR_UNUSED;
        }
    }
    // End-of-generation set.
    let mut eog: Vec<u32> = [ids.fim_pad, ids.fim_rep, ids.fim_sep].into_iter().flatten().collect();
    for (id, text) in texts.iter().enumerate() {
        if eligible(id) && EOG_TEXTS.contains(&text.as_str()) {
            eog.push(id as u32);
            attrs[id] |= ATTR_CONTROL;
        }
    }
    // gpt-oss: these are always rendered.
    for (id, text) in texts.iter().enumerate() {
        if eligible(id) && matches!(text.as_str(), "<|channel|>" | "<|message|>" | "<|start|>" | "<|constrain|>") {
            attrs[id] = ATTR_USER_DEFINED;
        }
    }
    eog.extend([ids.eos, ids.eot, ids.eom].into_iter().flatten());
    eog.sort_unstable();
    eog.dedup();
    // llama.cpp's workarounds: o200k_harmony / solar-open, where "<|end|>" must not end
    // generation, and gemma4 / paddleocr, where "</s>" must not.
    let find = |eog: &[u32], t: &str| eog.iter().position(|&id| texts[id as usize] == t);
    let has = |eog: &[u32], t: &str| find(eog, t).is_some();
    let has_call = has(&eog, "<|call|>") || has(&eog, "<|calls|>");
    if has_call
        && (has(&eog, "<|return|>") || has(&eog, "<|flush|>"))
        && let Some(pos) = find(&eog, "<|end|>")
    {
        let end = eog.remove(pos);
        attrs[end as usize] = ATTR_USER_DEFINED;
    }
    if has(&eog, "<|tool_response>")
        && let Some(pos) = find(&eog, "</s>")
    {
        let s = eog.remove(pos);
        attrs[s as usize] = ATTR_NORMAL;
    }
    eog
}
