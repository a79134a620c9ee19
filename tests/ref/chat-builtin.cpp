// chat-builtin.cpp: llama.cpp's built-in chat renderer (src/llama-chat.cpp, compiled in from the
// llama.cpp sources by tests/ref/gen-chat-families.py; nothing of llama.cpp is in this repo) as a
// filter. stdin, each string as "<byte length>\n<bytes>": the template text (or a renderer name
// such as "mistral-v7-tekken"), then "<add_assistant 0/1>\n", "<n messages>\n", then role and
// content of each message. stdout: the rendered prompt, or "ERROR <code>".
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "llama-chat.h"
#include "llama.h"

static std::string read_n(size_t n)
{
    std::string s(n, '\0');
    if (n && fread(&s[0], 1, n, stdin) != n)
        exit(2);
    return s;
}

static size_t read_len()
{
    unsigned long n;
    if (scanf("%lu", &n) != 1)
        exit(2);
    fgetc(stdin); // the newline after the number
    return n;
}

int main()
{
    // framing: <len>\n<template bytes> <add_ass>\n <n_msgs>\n then per message <len>\n<role><len>\n<content>
    std::string tmpl = read_n(read_len());
    int add_ass = (int)read_len();
    size_t n = read_len();
    std::vector<std::string> roles(n), contents(n);
    for (size_t i = 0; i < n; i++) {
        roles[i] = read_n(read_len());
        contents[i] = read_n(read_len());
    }
    std::vector<llama_chat_message> msgs(n);
    std::vector<const llama_chat_message *> ptrs(n);
    for (size_t i = 0; i < n; i++) {
        msgs[i] = {roles[i].c_str(), contents[i].c_str()};
        ptrs[i] = &msgs[i];
    }
    llm_chat_template t = llm_chat_detect_template(tmpl);
    std::string out;
    int32_t rc = llm_chat_apply_template(t, ptrs, out, add_ass != 0);
    if (rc < 0) {
        printf("ERROR %d", rc);
        return 0;
    }
    fwrite(out.data(), 1, out.size(), stdout);
    return 0;
}
