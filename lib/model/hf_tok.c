/*
 * Hugging Face tokenizer.json / tokenizer_config.json / generation_config.json reader (skeleton:
 * the parser lands in the next commits).
 */
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "model/hf_tok.h"

spk_status spk_hf_tok_parse(const char *label, const char *tokenizer_json, size_t tj_len,
                            const char *config_json, size_t cfg_len, const char *gen_json,
                            size_t gen_len, spk_hf_tok *out)
{
    (void)tokenizer_json; (void)tj_len; (void)config_json; (void)cfg_len; (void)gen_json; (void)gen_len;
    if (!out)
        return spk_err(SPK_ERR_INVALID_ARG, "spk_hf_tok_parse: out is NULL");
    memset(out, 0, sizeof *out);
    return spk_err(SPK_ERR_UNSUPPORTED, "%s: tokenizer.json reading is not implemented yet", label ? label : "(memory)");
}

spk_status spk_hf_tok_read(const char *dir, spk_hf_tok *out)
{
    return spk_hf_tok_parse(dir, NULL, 0, NULL, 0, NULL, 0, out);
}

void spk_hf_tok_free(spk_hf_tok *t)
{
    if (!t)
        return;
    free(t->chat_template);
    free(t->eog_ids);
    free(t->priv);
    memset(t, 0, sizeof *t);
}
