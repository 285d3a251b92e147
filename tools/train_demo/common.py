"""Constants shared by the demo-model data preparation and training scripts."""

BOS = "<\uff5cbegin\u2581of\u2581sentence\uff5c>"
EOS = "<\uff5cend\u2581of\u2581sentence\uff5c>"

# The DeepSeek-V2 / V2-Lite chat template, as published in their tokenizer_config.json.
CHAT_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ 'User: ' + message['content'] + '\\n\\n' }}{% elif message['role'] == 'assistant' %}"
    "{{ 'Assistant: ' + message['content'] + eos_token }}{% elif message['role'] == 'system' %}"
    "{{ message['content'] + '\\n\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# Number of BPE tokens (256 byte symbols + merges); BOS and EOS follow as ids BPE_VOCAB, BPE_VOCAB+1.
BPE_VOCAB = 4000
# Embedding rows (config vocab_size); rows past the tokenizer's last id are padding, as in DeepSeek-V2.
VOCAB_ROWS = 4096
