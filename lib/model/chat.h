/*
 * Chat templates: recognise the family of a model's tokenizer.chat_template (ChatML, Llama 3)
 * and render messages the way that template does, without a Jinja interpreter.
 */
#ifndef SPK_MODEL_CHAT_H
#define SPK_MODEL_CHAT_H

#include <stdbool.h>
#include <stddef.h>

#include "model/gguf.h"
#include "sparkinfer/sparkinfer.h"

typedef enum spk_chat_kind {
    SPK_CHAT_UNKNOWN = 0,
    SPK_CHAT_CHATML = 1,   /* <|im_start|>role\ncontent<|im_end|>\n (SmolLM2, Qwen) */
    SPK_CHAT_LLAMA3 = 2,   /* <|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|> */
} spk_chat_kind;

/* Family of a template text (len bytes, need not be NUL-terminated). */
spk_chat_kind spk_chat_detect(const char *tmpl, size_t len);

/*
 * Render `n` messages with template text `tmpl`. ChatML: when the template carries a default
 * system message (SmolLM2: "You are a helpful AI assistant named SmolLM, trained by Hugging
 * Face") and the first message is not a system message, that message comes first, as the
 * template's Jinja does. Llama 3: contents are trimmed; no BOS text (the tokenizer adds BOS).
 * `add_assistant` appends the opening of the assistant turn. NUL-terminates `buf` when there is
 * room; *n_out excludes the NUL; TOO_LONG (with *n_out the size needed) if it exceeds `cap`.
 * UNSUPPORTED for a template of another family; INVALID_ARG for NULL role/content.
 */
spk_status spk_chat_render_template(const char *tmpl, size_t len, const spk_chat_message *msgs,
                                    size_t n, bool add_assistant, char *buf, size_t cap,
                                    size_t *n_out);

/* The same with the file's tokenizer.chat_template (UNSUPPORTED if the file has none). */
spk_status spk_chat_render(const spk_gguf_file *f, const spk_chat_message *msgs, size_t n,
                           bool add_assistant, char *buf, size_t cap, size_t *n_out);

#endif
