#!/usr/bin/env python3
"""gen-chat-families.py: reference renderings of real chat templates (tests/data/ref_chat_families.json,
read by tests/unit/test_chat_families.c).

Templates: the model templates llama.cpp ships in models/templates/ (Qwen3, Qwen2.5, Llama 3.1/3.2,
Mistral Small 3.2, Devstral, and some families we refuse), copied into the JSON so the test needs
no llama.cpp. For every template and conversation:
  builtin        llama.cpp's own C renderer (src/llama-chat.cpp: llm_chat_detect_template +
                 llm_chat_apply_template), compiled from the llama.cpp sources with
                 tests/ref/chat-builtin.cpp; what llama_chat_apply_template returns
  builtin_tekken the same renderer by name "mistral-v7-tekken" (Mistral templates only): what
                 Mistral's Jinja template renders for tekken models (no spaces around [INST])
  (harmony: builtin only; the gpt-oss Jinja template writes today's date into its system message)
  jinja          the template rendered by Jinja2 as HF transformers does (trim_blocks,
                 lstrip_blocks; bos_token empty: the tokenizer adds BOS), for templates whose
                 output does not depend on the date (ChatML, Qwen3)
  jinja_no_think Qwen3 only: the same with enable_thinking=false
Which of these the library must equal is the test's choice (see its comment).

Usage: python3 gen-chat-families.py --llamacpp-src DIR --out FILE  (needs jinja2 and g++)
"""
import argparse
import json
import os
import subprocess
import tempfile

TEMPLATES = [
    ('qwen3', 'Qwen-Qwen3-0.6B.jinja'),
    ('chatml', 'Qwen-Qwen2.5-7B-Instruct.jinja'),
    ('llama3', 'meta-llama-Llama-3.1-8B-Instruct.jinja'),
    ('llama3', 'meta-llama-Llama-3.2-3B-Instruct.jinja'),
    ('mistral-v7', 'Mistral-Small-3.2-24B-Instruct-2506.jinja'),
    ('mistral-v7', 'unsloth-mistral-Devstral-Small-2507.jinja'),
    ('gemma', 'google-gemma-2-2b-it.jinja'),
    ('harmony', 'openai-gpt-oss-120b.jinja'),
    ('phi-3', 'microsoft-Phi-3.5-mini-instruct.jinja'),
    ('mistral-v3-tekken', 'mistralai-Mistral-Nemo-Instruct-2407.jinja'),
]

CONVERSATIONS = [
    [('user', 'Hello!')],
    [('system', 'You are terse.'), ('user', 'What is 2+2?')],
    [('system', 'You are terse.'), ('user', 'What is 2+2?'), ('assistant', '4'), ('user', 'And 3+3?')],
    [('user', '  spaced question \n'), ('assistant', '  an answer with spaces  ')],
    [('user', 'Why?'), ('assistant', '<think>\nLet me think.\n</think>\n\nBecause.'), ('user', 'Sure?')],
    [('user', 'Why?'), ('assistant', '<think>\nHmm.\n</think>\n\nYes.')],
    [('user', 'Ünïcödé 你好 🦙\n\tcode:\n```\nx = 1\n```')],
]


def builtin(binary, tmpl, msgs, add_ass):
    def enc(s):
        b = s.encode('utf-8')
        return b'%d\n' % len(b) + b
    data = enc(tmpl) + b'%d\n' % int(add_ass) + b'%d\n' % len(msgs)
    for r, c in msgs:
        data += enc(r) + enc(c)
    out = subprocess.run([binary], input=data, capture_output=True, check=True).stdout.decode('utf-8')
    return None if out.startswith('ERROR') else out


def jinja(tmpl, msgs, add_ass, **extra):
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(m):
        raise jinja2.exceptions.TemplateError(m)
    env.globals['raise_exception'] = raise_exception
    t = env.from_string(tmpl)
    return t.render(messages=[{'role': r, 'content': c} for r, c in msgs], add_generation_prompt=add_ass,
                    bos_token='', eos_token='', **extra)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--llamacpp-src', required=True)
    ap.add_argument('--out', required=True)
    a = ap.parse_args()
    src = a.llamacpp_src
    tmp = tempfile.mkdtemp()
    binary = os.path.join(tmp, 'chat-builtin')
    here = os.path.dirname(os.path.abspath(__file__))
    subprocess.run(['g++', '-std=c++17', '-O1', '-I' + os.path.join(src, 'src'), '-I' + os.path.join(src, 'include'),
                    '-I' + os.path.join(src, 'ggml', 'include'), os.path.join(here, 'chat-builtin.cpp'),
                    os.path.join(src, 'src', 'llama-chat.cpp'), '-o', binary], check=True)
    res = {'about': 'see tests/ref/gen-chat-families.py', 'templates': []}
    for family, fname in TEMPLATES:
        text = open(os.path.join(src, 'models', 'templates', fname), encoding='utf-8').read()
        entry = {'family': family, 'file': fname, 'template': text, 'cases': []}
        if family in ('qwen3', 'chatml', 'llama3', 'mistral-v7', 'harmony'):
            for conv in CONVERSATIONS:
                for add_ass in (True, False):
                    if not add_ass and conv[-1][0] != 'assistant':
                        continue
                    c = {'messages': [list(m) for m in conv], 'add_assistant': add_ass,
                         'builtin': builtin(binary, text, conv, add_ass)}
                    if family == 'mistral-v7':
                        c['builtin_tekken'] = builtin(binary, 'mistral-v7-tekken', conv, add_ass)
                    if family in ('qwen3', 'chatml'):
                        c['jinja'] = jinja(text, conv, add_ass)
                    if family == 'qwen3':
                        c['jinja_no_think'] = jinja(text, conv, add_ass, enable_thinking=False)
                    entry['cases'].append(c)
        res['templates'].append(entry)
    with open(a.out, 'w', encoding='utf-8') as f:
        json.dump(res, f, ensure_ascii=False, indent=1)
        f.write('\n')


if __name__ == '__main__':
    main()
