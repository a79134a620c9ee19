/*
 * Chat templates: recognise the family of a model's tokenizer.chat_template (ChatML, Qwen3,
 * Llama 3, Mistral v7/tekken) and render messages the way that template does, without a Jinja
 * interpreter.
 */
#ifndef SPK_MODEL_CHAT_H
#define SPK_MODEL_CHAT_H

#include <stdbool.h>
#include <stddef.h>

#include "model/gguf.h"
#include "sparkinfer/sparkinfer.h"

typedef enum spk_chat_kind {
    SPK_CHAT_UNKNOWN = 0,
    SPK_CHAT_CHATML = 1,   /* <|im_start|>role\ncontent<|im_end|>\n (SmolLM2, Qwen2.5) */
    SPK_CHAT_LLAMA3 = 2,   /* <|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|> */
    SPK_CHAT_QWEN3 = 3,    /* ChatML with Qwen3's <think> handling (template mentions enable_thinking) */
    SPK_CHAT_MISTRAL_V7 = 4, /* [SYSTEM_PROMPT] ...[/SYSTEM_PROMPT][INST] ...[/INST] reply</s> */
    SPK_CHAT_HARMONY = 5,  /* gpt-oss: <|start|>role<|message|>content<|end|> (<|return|> after replies) */
} spk_chat_kind;

/* Rendering options (bit flags). */
enum {
    SPK_CHAT_NO_THINKING = 1u << 0, /* Qwen3: enable_thinking=false (empty <think></think> opens the turn) */
    SPK_CHAT_TEKKEN = 1u << 1,      /* Mistral v7 on a Tekken vocabulary: no spaces after [INST] etc. */
};

/* Family of a template text (len bytes, need not be NUL-terminated). */
spk_chat_kind spk_chat_detect(const char *tmpl, size_t len);

/* Name of a template family we recognise but do not render ("gemma", "phi-3",
 * "mistral-v1", "mistral-v3", "mistral-v3-tekken", "llama2", "deepseek", "command-r", "phi-4"),
 * or NULL. */
const char *spk_chat_unsupported_family(const char *tmpl, size_t len);

/*
 * Render `n` messages with template text `tmpl`, as the template's family renders them:
 * - ChatML: when the template carries a default system message (SmolLM2: "You are a helpful AI
 *   assistant named SmolLM, trained by Hugging Face"; Qwen2.5) and the first message is not a
 *   system message, that message comes first, as the template's Jinja does.
 * - Qwen3: its Jinja template without tools: reasoning (<think>...</think>) of assistant turns
 *   before the last user message dropped, the last turns' kept in <think>\n...\n</think>\n\n,
 *   tool messages as <tool_response> in user turns; SPK_CHAT_NO_THINKING appends
 *   "<think>\n\n</think>\n\n" after the assistant opening (enable_thinking=false).
 * - Llama 3: contents trimmed; no BOS text (the tokenizer adds BOS); llama.cpp's renderer.
 * - Mistral v7: llama.cpp's "mistral-v7" renderer (a space after [SYSTEM_PROMPT], [INST] and
 *   before replies), or "mistral-v7-tekken" with SPK_CHAT_TEKKEN (no spaces; what the Mistral
 *   Small 3.x Jinja template renders); no default system prompt, no BOS text.
 * - Harmony (gpt-oss): llama.cpp's built-in renderer: <|start|>role<|message|>content, then
 *   <|return|> after assistant turns and <|end|> after the others; the opening is
 *   <|start|>assistant. No default system message (the Jinja template's embeds today's date).
 * `add_assistant` appends the opening of the assistant turn (Mistral has none). NUL-terminates
 * `buf` when there is room; *n_out excludes the NUL; TOO_LONG (with *n_out the size needed) if
 * it exceeds `cap`. UNSUPPORTED for a template of another family (naming it when known);
 * INVALID_ARG for NULL role/content.
 */
spk_status spk_chat_render_template_ex(const char *tmpl, size_t len, unsigned flags, const spk_chat_message *msgs,
                                       size_t n, bool add_assistant, char *buf, size_t cap, size_t *n_out);

/* spk_chat_render_template_ex with flags 0. */
spk_status spk_chat_render_template(const char *tmpl, size_t len, const spk_chat_message *msgs,
                                    size_t n, bool add_assistant, char *buf, size_t cap,
                                    size_t *n_out);

/* The same with the file's tokenizer.chat_template (UNSUPPORTED if the file has none);
 * SPK_CHAT_TEKKEN is added when the file's tokenizer.ggml.pre is "tekken". */
spk_status spk_chat_render_ex(const spk_gguf_file *f, unsigned flags, const spk_chat_message *msgs, size_t n,
                              bool add_assistant, char *buf, size_t cap, size_t *n_out);
spk_status spk_chat_render(const spk_gguf_file *f, const spk_chat_message *msgs, size_t n,
                           bool add_assistant, char *buf, size_t cap, size_t *n_out);

#endif
