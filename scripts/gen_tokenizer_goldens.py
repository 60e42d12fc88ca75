#!/usr/bin/env python3
"""Writes the tokenizer goldens under tests/golden/tokenizer/ from independent references:

  ids_smollm2.json, ids_gemma3.json  token ids (and HF's decode) of a varied corpus, from HF `tokenizers` as
      transformers builds it from the GGUF (transformers.integrations.gguf: get_gguf_tokenizer +
      convert_gguf_tokenizer, the path of AutoTokenizer.from_pretrained(..., gguf_file=...)). One correction:
      transformers knows no "smollm" pre-tokenizer and would fall back to plain ByteLevel, while SmolLM2's own
      tokenizer.json (HuggingFaceTB/SmolLM2-135M-Instruct) has
        Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)]
      which is set here. The two differ on spaces before digits ("a  1").
  splits.json  pre-tokenizer pieces of the same corpus: Llama 3, Qwen 2 and GPT-2 split regexes run by Python's
      `regex` module (and checked here against HF's Split on the same texts), GPT-2 with individual digits by
      HF's pre-tokenizer itself.
  chat_templates.json  prompts rendered by jinja2 as transformers renders them (sandboxed, trim_blocks,
      lstrip_blocks): SmolLM2's template read from its GGUF, and Gemma 3's official instruction template (the
      270M base GGUF carries none), rendered with bos_token="" since longctx leaves BOS to the tokenizer.

Needs: pip install transformers tokenizers regex jinja2 gguf; Debian's bible-kjv for the KJV text.
Usage: python3 scripts/gen_tokenizer_goldens.py [model_dir]   (default ~/.cache/longctx)
"""
import json
import os
import subprocess
import sys

import jinja2
import jinja2.sandbox
import regex
from tokenizers import Regex, pre_tokenizers
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.integrations.gguf.gguf_tokenizer_mapping import (
    _LLAMA3_SPLIT,
    convert_gguf_tokenizer,
    get_gguf_tokenizer,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as QWEN2_SPLIT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests/golden/tokenizer")
GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def corpus():
    kjv = subprocess.run(["bible", "-l10000", "gen1:1-gen3:24"], check=True, capture_output=True, text=True).stdout
    texts = [
        "",
        "Hello world",
        kjv,
        # English prose.
        "The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst of times; "
        "it was the age of wisdom, it was the age of foolishness. \"Well,\" said Mr. O'Brien -- \"who knows?\"",
        "I'm sure they'll say it's fine, don't you think? We've seen it. I'D SAY YOU'RE RIGHT; SHE'LL GO. "
        "'Tis the season. rock'n'roll 'ſ 'Ve",
        # Unicode.
        "Café naïve résumé façade Ångström coöperate e\u0301 n\u0303 Zoë",
        "你好，世界！这是一个测试。日本語のテキストとカタカナ ー。한국어 텍스트입니다.",
        "Привет, мир! Україна, Беларусь. Ελληνικά: Καλημέρα κόσμε.",
        "مرحبا بالعالم! שלום עולם. नमस्ते दुनिया। สวัสดีชาวโลก",
        "Emoji: 😀👍🏽🇺🇸 and ❤️ family 👨‍👩‍👧‍👦 done. ∑∫√≈≠ ＡＢＣ１２３ ﬁ ǅ ℃ ™",
        "▁already▁spaced▁text and <0x41> literal",
        # Digits.
        "1234567 and 3.14159, 1,000,000; 2024-01-01T12:34:56Z 0x1F 1e-9 ٣٤٥ ١٢ ½ Ⅻ ² 𝟙𝟚",
        "a 1 b  2 c   3\t4\n5 \n6",
        # Whitespace runs.
        "a  b   c\t\td\n\ne\r\nf \n g  \n\n  h",
        "   leading and trailing   ",
        " ",
        "\n",
        "\n\n\n\n",
        "\t \t",
        "word\u00a0nbsp\u3000ideographic\u2003em\u2028line\x0b\x0cff",
        "x" + " " * 17 + "y" + "\n" * 7 + "z" + "\t" * 5 + "w",
        # Code.
        "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n\n\nprint(fib(10))  # 55\n",
        "#include <cstdio>\nint main() {\n\tfor (int i = 0; i < 10; ++i) {\n\t\tprintf(\"%d\\n\", i);\n\t}\n"
        "\treturn 0;\n}\n",
        '{"key": [1, 2.5, -3e10], "nested": {"a": null, "b": true}}',
        "<table><tr><td>cell</td></tr></table> <h1>Title</h1> <b>bold</b>",
        "=" * 80 + "\n" + "-" * 33 + "\n" + "a" * 100,
        # Special-token texts.
        "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n",
        "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
        "<|endoftext|>text<|endoftext|>",
        "<bos>text<eos><unused5><pad>",
        "<|im_start <|im_end|>> <<start_of_turn>> <|im_start|><|im_start|>",
        "[multimodal] <start_of_image>",
        # Control characters (SmolLM2's vocabulary lacks some bytes: HF drops them).
        "a\x00b\x04c\x1dd\x7fe",
        "Hello世界123abc!!!  ...???  ---\t###",
    ]
    return texts + random_texts(120)


def random_texts(n_texts):
    """Seeded mixtures of scripts, digits, odd spaces, punctuation and special-token texts: the combinations
    no hand-written case thinks of (the split regexes' lookaheads, merges across scripts)."""
    import random
    rng = random.Random(1234)
    pools = ["abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789", "  ", "\t\n\r\x0b\x0c",
             "\u00a0\u2003\u3000\u2028\u0085", ".,;:!?'\"()[]{}<>/\\|-_=+*&^%$#@~`", "éèàüöñçßÅø",
             "中文字符日本語한국어", "абвгдеёжзийклмнопрстуфхцчшщъыьэюя", "αβγδεζηθ", "مرحبابالعالم",
             "😀👍🏽🇺🇸❤️\u200d", "\u0301\u0303\u0308", "٣٤٥½Ⅻ²𝟙", "ſ'sS'T're'VE'll'D", "▁"]
    specials = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<start_of_turn>", "<end_of_turn>", "<bos>",
                "<table>", "</td>", "[multimodal]", "\n\n\n", "\t\t", "    "]
    texts = []
    for _ in range(n_texts):
        parts = []
        for _ in range(rng.randint(1, 30)):
            if rng.random() < 0.05:
                parts.append(rng.choice(specials))
            else:
                pool = rng.choice(pools)
                parts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 6))))
        texts.append("".join(parts))
    return texts


def hf_tokenizer(path):
    arch, tokenizer_dict, _ = get_gguf_tokenizer(path)
    tok, _ = convert_gguf_tokenizer(arch, tokenizer_dict)
    if tokenizer_dict.get("pre_tokenizer_type") == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ])
    return tok


def write_cases(path, header, cases):
    # One case per line keeps diffs of a regenerated golden readable.
    with open(path, "w") as f:
        f.write("{\n")
        for k, v in header.items():
            f.write(f"{json.dumps(k)}: {json.dumps(v)},\n")
        f.write('"cases": [\n')
        f.write(",\n".join(json.dumps(c, ensure_ascii=False) for c in cases))
        f.write("\n]}\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def gen_ids(model_dir, texts):
    for name, file in [("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"), ("gemma3", "gemma-3-270m-q4_k_m.gguf")]:
        tok = hf_tokenizer(os.path.join(model_dir, file))
        cases = []
        for t in texts:
            ids = tok.encode(t, add_special_tokens=False).ids
            case = {"text": t, "ids": ids}
            decoded = tok.decode(ids, skip_special_tokens=False)
            if decoded != t:  # absent: decodes to the text itself
                case["decoded"] = decoded
            cases.append(case)
        write_cases(os.path.join(OUT, f"ids_{name}.json"),
                    {"model": file, "reference": "transformers GGUF conversion to HF tokenizers (parse special on)"},
                    cases)


def gen_splits(texts):
    inverse = {c: b for b, c in bytes_to_unicode().items()}
    digits = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    cases = []
    for t in texts:
        if len(t) > 2000:  # the KJV chapters: plain prose, and the ids goldens cover them
            continue
        case = {"text": t}
        for name, pattern in [("gpt2", GPT2_SPLIT), ("llama3", _LLAMA3_SPLIT), ("qwen2", QWEN2_SPLIT)]:
            pieces = regex.findall(pattern, t)
            hf = [p for p, _ in pre_tokenizers.Split(Regex(pattern), behavior="isolated").pre_tokenize_str(t)]
            assert pieces == hf, (name, t, pieces, hf)
            case[name] = pieces
        case["gpt2_digits"] = [bytes(inverse[c] for c in p).decode("utf-8")
                               for p, _ in digits.pre_tokenize_str(t)]
        cases.append(case)
    write_cases(os.path.join(OUT, "splits.json"), {"reference": "Python regex module (= HF Split); HF Digits+ByteLevel"},
                cases)


GEMMA3_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""


def render(template, messages, add_generation_prompt):
    def raise_exception(msg):
        raise jinja2.exceptions.TemplateError(msg)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                bos_token="", eos_token="")
    except jinja2.exceptions.TemplateError:
        return None  # the template refuses this conversation; longctx must throw


def gen_chat(model_dir):
    import gguf
    reader = gguf.GGUFReader(os.path.join(model_dir, "SmolLM2-135M-Instruct.Q4_1.gguf"))
    smollm2_template = reader.fields["tokenizer.chat_template"].contents()
    u, a, s = "user", "assistant", "system"
    conversations = [
        ([(u, "Hello")], True),
        ([(u, "Hello")], False),
        ([(s, "You are terse."), (u, "Hi")], True),
        ([(u, "What is 2+2?"), (a, "4"), (u, "And 3+3?")], True),
        ([(s, "Be kind."), (u, "Q1"), (a, "A1"), (u, "Q2")], False),
        ([(u, "  padded content \n\t")], True),
        ([(u, "Unicode: café 你好 😀\n\nTwo paragraphs.")], True),
        ([(a, "assistant first")], True),
        ([(u, "one"), (u, "two")], True),
        ([], True),
    ]
    cases = []
    for msgs, gen in conversations:
        messages = [{"role": r, "content": c} for r, c in msgs]
        cases.append({"messages": messages, "add_generation_prompt": gen,
                      "chatml_smollm2": render(smollm2_template, messages, gen),
                      "gemma": render(GEMMA3_TEMPLATE, messages, gen)})
    write_cases(os.path.join(OUT, "chat_templates.json"),
                {"reference": "jinja2: SmolLM2's GGUF template; Gemma 3 official template with bos_token=''; "
                              "null: the template raises"}, cases)


def main():
    model_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser("~/.cache/longctx")
    os.makedirs(OUT, exist_ok=True)
    texts = corpus()
    gen_ids(model_dir, texts)
    gen_splits(texts)
    gen_chat(model_dir)


if __name__ == "__main__":
    main()
