"""Tiny LLaVA / Qwen2-VL / Qwen2.5-VL models built from a config, fully offline.

The tokenizer is a byte-level BPE trained here on a small built-in corpus (no download),
the processor is the family's own transformers class around it, and the model is the
family's transformers class with random weights. ``save_tiny`` writes all three as a
checkpoint directory, which then loads through the same ``from_pretrained`` path as a hub
model. Sizes come from ``conf/model/*_tiny.yaml`` (``tiny:``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Vicuna-v1 style, as LLaVA-1.5 was trained: "USER: <image>\nq ASSISTANT: a</s>".
LLAVA_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{{ c['text'] }}{% endfor %}{% endif %} "
    "{% else %}{{ m['role'].upper() }}: "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% if m['role'] == 'assistant' %}</s>{% else %} {% endif %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

#: ChatML as SmolLM2 is tuned on ("<|im_start|>user\n<image>\nq<|im_end|>\n..."), with
#: content parts; no default system turn (it would cost ~20 tokens per sample on CPU).
CHATML_LLAVA_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

#: The standard Qwen2-VL chat template (without ``add_vision_id``).
QWEN_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

QWEN_SPECIAL = (
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

#: SmolVLM's template (Idefics3 style: "User:<image>q<end_of_utterance>\nAssistant: a",
#: a video part as ``<video>``), with plain-string content accepted as well.
SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for m in messages %}{{ m['role'] | capitalize }}"
    "{% if m['content'] is string %}: {{ m['content'] }}{% else %}"
    "{% if m['content'][0]['type'] == 'image' %}:{% else %}: {% endif %}"
    "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}"
    "{% elif c['type'] == 'image' %}<image>{% elif c['type'] == 'video' %}<video>{% endif %}"
    "{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)

#: the tokens SmolVLM's processor writes around each image's ``<image>`` run (the grid
#: tokens only when it splits images into tiles)
SMOLVLM_SPECIAL = (
    "<|im_start|>", "<end_of_utterance>", "<image>", "<fake_token_around_image>",
    "<global-img>", "<video>",
    *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)),
)  # fmt: skip

_WORDS = [
    "circle",
    "square",
    "triangle",
    "star",
    "hexagon",
    "cross",
    "red",
    "green",
    "blue",
    "yellow",
    "purple",
    "orange",
    "white",
    "black",
    "small",
    "medium",
    "large",
    "light",
    "dark",
    "gradient",
    "noisy",
    "striped",
    "background",
    "image",
    "picture",
    "shape",
    "colour",
    "color",
    "photo",
    "shows",
    "drawn",
    "sits",
    "against",
    "over",
    "describe",
    "briefly",
    "what",
    "which",
    "is",
    "it",
    "the",
    "a",
    "an",
    "and",
    "on",
    "of",
    "in",
    "this",
    "with",
    "there",
    "are",
    "how",
    "many",
    "what's",
    "where",
    "left",
    "right",
    "top",
    "bottom",
    "center",
    "cat",
    "dog",
    "ball",
    "person",
    "car",
    "tree",
    "sky",
    "water",
    "yes",
    "no",
    "one",
    "two",
    "three",
]

CORPUS_LINES = (
    "What is shown in this image?",
    "Describe the image briefly.",
    "What shape is drawn, and what colour is it?",
    "Which colour is the shape?",
    "The image shows a small red circle on a light background.",
    "It is a blue square. It is large and sits on a dark background.",
    "The triangle is green; it is medium, on a striped background.",
    "A picture of an orange hexagon over a noisy background.",
    "You are a helpful assistant.",
    "USER: ASSISTANT: system user assistant",
)


def tiny_corpus() -> list[str]:
    """The built-in corpus the tiny tokenizers are trained on (deterministic)."""
    lines = list(CORPUS_LINES)
    for i, w in enumerate(_WORDS):
        lines.append(
            f"{w} {_WORDS[(i * 7 + 3) % len(_WORDS)]} {_WORDS[(i * 13 + 5) % len(_WORDS)]}"
        )
        lines.append(w.capitalize() + ".")
    return lines


def build_tokenizer(
    specials: tuple[str, ...],
    *,
    pad: str,
    eos: str,
    bos: str,
    unk: str | None,
    vocab_size: int = 512,
) -> Any:
    """A byte-level BPE tokenizer trained on :func:`tiny_corpus`, as a transformers fast
    tokenizer (``AutoTokenizer`` reloads it)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    names = [pad, eos, bos, *([unk] if unk else []), *specials]
    names = list(dict.fromkeys(names))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=names,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tiny_corpus(), trainer=trainer)
    extra = [s for s in specials if s not in (pad, eos, bos, unk)]
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=pad,
        eos_token=eos,
        bos_token=bos,
        unk_token=unk,
        additional_special_tokens=extra,
    )


def build_tiny(
    family: str, tiny: dict[str, Any], seed: int = 0, language_dir: str | None = None,
    vision_from: str | None = None,
) -> tuple[Any, Any]:  # fmt: skip
    """``(model, processor)`` of a tiny ``family`` model with random weights.

    ``tiny`` holds the sizes: ``hidden_size``, ``intermediate_size``, ``layers``, ``heads``,
    ``kv_heads``, ``vision_hidden``, ``vision_layers``, ``vision_heads``, ``image_size``
    (LLaVA), ``min_pixels`` / ``max_pixels`` (Qwen), ``max_positions``.

    ``language_dir`` (LLaVA only): a local causal-LM folder (e.g. SmolLM2) that becomes
    the language model, with its tokenizer; only the vision tower and projector are tiny
    and random (the ``tiny`` LM sizes are then unused).

    ``vision_from`` (with ``language_dir``): a lakeloom CLIP run directory whose exported
    ViT image tower (converted by :mod:`core.models.clip_to_hf`) becomes the vision tower,
    with its preprocessing; the ``tiny`` vision sizes are then unused.
    """
    import torch

    torch.manual_seed(seed)
    if language_dir is not None:
        if family != "llava":
            raise ValueError(f"a real language model is wired for llava only, not {family!r}")
        return _tiny_llava_on(tiny, language_dir, vision_from)
    if vision_from is not None:
        raise ValueError("vision_from (a CLIP run's tower) needs a real language model too")
    if family == "llava":
        return _tiny_llava(tiny)
    if family in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5"):
        return _tiny_qwen(family, tiny)
    if family == "smolvlm":
        return _tiny_smolvlm(tiny)
    raise ValueError(f"no tiny builder for family {family!r}")


def _tiny_llama_text(t: dict[str, Any], tok: Any) -> dict[str, Any]:
    """The tiny Llama language model's config keys (LLaVA's and SmolVLM's), sized by ``t``."""
    return dict(
        vocab_size=len(tok),
        hidden_size=t.get("hidden_size", 64),
        intermediate_size=t.get("intermediate_size", 128),
        num_hidden_layers=t.get("layers", 2),
        num_attention_heads=t.get("heads", 4),
        num_key_value_heads=t.get("kv_heads", 2),
        max_position_embeddings=t.get("max_positions", 1024),
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )


def _tiny_llava(t: dict[str, Any]) -> tuple[Any, Any]:
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tok = build_tokenizer(("<image>",), pad="<pad>", eos="</s>", bos="<s>", unk="<unk>")
    size, patch = int(t.get("image_size", 56)), int(t.get("patch_size", 14))
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=t.get("vision_hidden", 64),
            intermediate_size=2 * t.get("vision_hidden", 64),
            num_hidden_layers=t.get("vision_layers", 2),
            num_attention_heads=t.get("vision_heads", 4),
            image_size=size,
            patch_size=patch,
            projection_dim=t.get("vision_hidden", 64),
        ),
        text_config=LlamaConfig(**_tiny_llama_text(t, tok)),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_seq_length=(size // patch) ** 2,
    )
    model = LlavaForConditionalGeneration(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=[0.4815, 0.4578, 0.4082],
        image_std=[0.2686, 0.2613, 0.2758],
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_TEMPLATE,
    )
    return model, processor


def _vision_config(t: dict[str, Any]) -> Any:
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=t.get("vision_hidden", 64),
        intermediate_size=2 * t.get("vision_hidden", 64),
        num_hidden_layers=t.get("vision_layers", 2),
        num_attention_heads=t.get("vision_heads", 4),
        image_size=int(t.get("image_size", 56)),
        patch_size=int(t.get("patch_size", 14)),
        projection_dim=t.get("vision_hidden", 64),
    )


def _clip_image_processor(size: int) -> Any:
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=[0.4815, 0.4578, 0.4082],
        image_std=[0.2686, 0.2613, 0.2758],
    )


def _tiny_llava_on(
    t: dict[str, Any], language_dir: str, vision_from: str | None = None
) -> tuple[Any, Any]:
    """LLaVA = tiny CLIP tower (random, or the one of the CLIP run ``vision_from``) +
    projector + the causal LM in ``language_dir`` (its weights loaded, ``<image>`` added to
    its tokenizer, embeddings resized)."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tok = AutoTokenizer.from_pretrained(language_dir)
    lm = AutoModelForCausalLM.from_pretrained(language_dir, dtype=torch.float32)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tower = None
    if vision_from is not None:
        from core.models.clip_to_hf import vision_from_run

        tower, image_processor = vision_from_run(vision_from)
        vision_config = tower.config
        size, patch = int(vision_config.image_size), int(vision_config.patch_size)
    else:
        size, patch = int(t.get("image_size", 56)), int(t.get("patch_size", 14))
        vision_config, image_processor = _vision_config(t), _clip_image_processor(size)
    cfg = LlavaConfig(
        vision_config=vision_config,
        text_config=lm.config,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        # a CLS-pooled CLIP tower trains its last layer's patch outputs for nothing (only
        # the CLS is read): LLaVA reads the layer before (-2), whose patches the CLS attends
        vision_feature_layer=int(t.get("vision_feature_layer", -1)),
        image_seq_length=(size // patch) ** 2,
        tie_word_embeddings=lm.config.tie_word_embeddings,
    )
    model = LlavaForConditionalGeneration(cfg)
    model.model.language_model.load_state_dict(lm.model.state_dict())
    model.lm_head.load_state_dict(lm.lm_head.state_dict())
    if tower is not None:
        model.model.vision_tower.load_state_dict(tower.state_dict())
    # the <image> row is never read (image features replace it); plain init, no sampling
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHATML_LLAVA_TEMPLATE,
    )
    return model, processor


def _tiny_qwen(family: str, t: dict[str, Any]) -> tuple[Any, Any]:
    import transformers as tf

    tok = build_tokenizer(QWEN_SPECIAL, pad="<|endoftext|>", eos="<|im_end|>",
                          bos="<|endoftext|>", unk=None)  # fmt: skip
    ids = {s: tok.convert_tokens_to_ids(s) for s in QWEN_SPECIAL}
    hidden, heads = int(t.get("hidden_size", 64)), int(t.get("heads", 4))
    half = hidden // heads // 2  # mrope sections (t, h, w) must sum to head_dim / 2
    section = [half - 2 * (half // 3), half // 3, half // 3]
    text = dict(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=t.get("intermediate_size", 128),
        num_hidden_layers=t.get("layers", 2),
        num_attention_heads=heads,
        num_key_value_heads=t.get("kv_heads", 2),
        max_position_embeddings=t.get("max_positions", 1024),
        rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": section},
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    vh = int(t.get("vision_hidden", 32))
    if family in ("qwen3_vl", "qwen3_5"):
        return _tiny_qwen3(family, t, tok, ids, text, vh)
    if family == "qwen2_vl":
        vision = dict(depth=t.get("vision_layers", 2), embed_dim=vh, hidden_size=hidden,
                      num_heads=t.get("vision_heads", 2), mlp_ratio=2, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2)  # fmt: skip
        cfg_cls, model_cls, proc_cls = (
            tf.Qwen2VLConfig, tf.Qwen2VLForConditionalGeneration, tf.Qwen2VLProcessor,
        )  # fmt: skip
    else:
        vision = dict(depth=t.get("vision_layers", 2), hidden_size=vh, intermediate_size=2 * vh,
                      num_heads=t.get("vision_heads", 2), out_hidden_size=hidden, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                      fullatt_block_indexes=[t.get("vision_layers", 2) - 1])  # fmt: skip
        cfg_cls, model_cls, proc_cls = (
            tf.Qwen2_5_VLConfig, tf.Qwen2_5_VLForConditionalGeneration, tf.Qwen2_5_VLProcessor,
        )  # fmt: skip
    model = _qwen_model(cfg_cls, model_cls, text, vision, ids, tok)
    kw = dict(
        min_pixels=int(t.get("min_pixels", 56 * 56)),
        max_pixels=int(t.get("max_pixels", 112 * 112)),
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
    )
    processor = proc_cls(
        image_processor=tf.Qwen2VLImageProcessor(**kw),
        tokenizer=tok,
        video_processor=tf.Qwen2VLVideoProcessor(**kw),
        chat_template=QWEN_TEMPLATE,
    )
    return model, processor


def _tiny_qwen3(
    family: str, t: dict[str, Any], tok: Any, ids: dict[str, int], text: dict[str, Any], vh: int
) -> tuple[Any, Any]:
    """Qwen3-VL (interleaved M-RoPE, DeepStack: vision features also added to the first LM
    layers) and Qwen3.5 (the same vision tower without DeepStack; LM layers alternate gated
    delta-net linear attention with full attention, ``full_attention_interval``)."""
    import transformers as tf

    head_dim = int(text["hidden_size"]) // int(text["num_attention_heads"])
    depth = int(t.get("vision_layers", 2))
    vision = dict(depth=depth, hidden_size=vh, intermediate_size=2 * vh,
                  num_heads=t.get("vision_heads", 2), out_hidden_size=text["hidden_size"],
                  patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                  num_position_embeddings=int(t.get("vision_positions", 64)))  # fmt: skip
    half = head_dim // 2  # Qwen3 keeps (t, h, w) = (24, 20, 20) of 64: same 2:5:5-ish split
    section = [half - 2 * (half * 5 // 16), half * 5 // 16, half * 5 // 16]
    rope = {"rope_type": "default", "rope_theta": 1e4, "mrope_section": section,
            "mrope_interleaved": True}  # fmt: skip
    text = {**text, "head_dim": head_dim, "rope_parameters": rope}
    if family == "qwen3_vl":
        vision["deepstack_visual_indexes"] = list(range(depth - 1))  # every block but the last
        cfg_cls, model_cls = tf.Qwen3VLConfig, tf.Qwen3VLForConditionalGeneration
    else:
        n = int(text["num_hidden_layers"])
        every = int(t.get("full_attention_interval", 2))
        text.update(
            layer_types=["full_attention" if (i + 1) % every == 0 else "linear_attention"
                         for i in range(n)],
            linear_conv_kernel_dim=4, linear_key_head_dim=head_dim,
            linear_value_head_dim=head_dim, linear_num_key_heads=int(t.get("kv_heads", 2)),
            linear_num_value_heads=int(text["num_attention_heads"]),
        )  # fmt: skip
        rope["partial_rotary_factor"] = 1.0
        cfg_cls, model_cls = tf.Qwen3_5Config, tf.Qwen3_5ForConditionalGeneration
    model = _qwen_model(cfg_cls, model_cls, text, vision, ids, tok)
    kw = dict(
        min_pixels=int(t.get("min_pixels", 64 * 64)),
        max_pixels=int(t.get("max_pixels", 128 * 128)),
        patch_size=16,
        temporal_patch_size=2,
        merge_size=2,
    )
    processor = tf.Qwen3VLProcessor(
        image_processor=tf.Qwen2VLImageProcessor(**kw),
        tokenizer=tok,
        video_processor=tf.Qwen3VLVideoProcessor(
            size={"shortest_edge": kw["min_pixels"], "longest_edge": kw["max_pixels"]},
            patch_size=16,
            temporal_patch_size=2,
            merge_size=2,
        ),
        chat_template=QWEN_TEMPLATE,
    )
    return model, processor


def _qwen_model(
    cfg_cls: Any, model_cls: Any, text: Any, vision: Any, ids: dict[str, int], tok: Any
) -> Any:
    """A random-init Qwen-family VLM from its text / vision configs and the vision token ids
    of the tiny tokenizer, generating with its pad / eos tokens."""
    cfg = cfg_cls(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    model = model_cls(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model


def _tiny_smolvlm(t: dict[str, Any]) -> tuple[Any, Any]:
    """SmolVLM: SigLIP-style vision tower, pixel-shuffle connector (the projector), Llama
    LM; one ``image_size`` square per image (``image_splitting`` adds tiles of that size)."""
    import transformers as tf

    tok = build_tokenizer(SMOLVLM_SPECIAL, pad="<|endoftext|>", eos="<end_of_utterance>",
                          bos="<|im_start|>", unk=None)  # fmt: skip
    size, patch, scale = int(t.get("image_size", 64)), int(t.get("patch_size", 16)), 2
    vh = int(t.get("vision_hidden", 32))
    cfg = tf.SmolVLMConfig(
        vision_config=dict(
            hidden_size=vh,
            intermediate_size=2 * vh,
            num_hidden_layers=t.get("vision_layers", 2),
            num_attention_heads=t.get("vision_heads", 2),
            image_size=size,
            patch_size=patch,
        ),
        text_config=dict(model_type="llama", **_tiny_llama_text(t, tok)),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=scale,
        tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id,
    )
    model = tf.SmolVLMForConditionalGeneration(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    split = bool(t.get("image_splitting", False))
    image_processor = tf.SmolVLMImageProcessor(
        do_image_splitting=split,
        size={"longest_edge": size * int(t.get("max_tiles_side", 2) if split else 1)},
        max_image_size={"longest_edge": size},
    )
    video_processor = tf.SmolVLMVideoProcessor(
        size={"longest_edge": size}, max_image_size={"longest_edge": size}
    )
    processor = tf.SmolVLMProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=video_processor,
        image_seq_len=(size // patch) ** 2 // scale**2,
        chat_template=SMOLVLM_TEMPLATE,
    )
    return model, processor


def save_tiny(
    family: str, tiny: dict[str, Any], out: str | Path, seed: int = 0,
    language_dir: str | None = None,
) -> Path:  # fmt: skip
    """Build a tiny model and write it with its processor as a checkpoint directory."""
    model, processor = build_tiny(family, tiny, seed, language_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
