"""The endpoints of each namespace the SDKs connect to (``ws://host/<namespace>``).

``llm`` and ``embedding``: listing, loading and unloading models, their info and load config,
tokenizing; ``llm`` also predicts and applies the prompt template, ``embedding`` embeds.
``system`` lists downloaded models and answers the SDKs' housekeeping calls; ``diagnostics``
streams the prompts the models receive (the log stream's ``llm.prediction.input`` records);
``files`` takes the images a history names (:mod:`lmserve.api.lmstudio_ws.system`).
``repository`` searches Hugging Face and downloads from it
(:mod:`lmserve.api.lmstudio_ws.repository`).  ``plugins`` registers plugins, takes their
hooks and lets clients use them (:mod:`lmserve.api.lmstudio_ws.plugins`).
"""

from __future__ import annotations

import logging
from typing import Any

from lmserve.api.common.chat import build_chat_request, prepare_chat
from lmserve.api.common.embeddings import create_embeddings
from lmserve.api.common.protocol import EmbeddingRequest
from lmserve.api.lmstudio_ws.errors import no_model_matching
from lmserve.api.lmstudio_ws.history import chat_messages
from lmserve.api.lmstudio_ws.info import (
    find_instance,
    instance_info,
    loaded_in,
    loaded_names,
    wanted_name,
)
from lmserve.api.lmstudio_ws.kvconfig import flatten, load_config, prediction, with_system_prompt
from lmserve.api.lmstudio_ws.loading import get_or_load, load_model, unload_model
from lmserve.api.lmstudio_ws.plugins import plugins_namespace
from lmserve.api.lmstudio_ws.predict import predict
from lmserve.api.lmstudio_ws.protocol import (
    ApplyTemplateParameter,
    EmbedParameter,
    GetOrLoadParameter,
    LoadModelParameter,
    ModelInfoParameter,
    PredictParameter,
    PreloadDraftParameter,
    SpecifierParameter,
    TokenizeParameter,
    UnloadParameter,
)
from lmserve.api.lmstudio_ws.repository import repository_namespace
from lmserve.api.lmstudio_ws.session import VOID, ChannelEndpoint, Context, Namespace, Rpc
from lmserve.api.lmstudio_ws.system import system_namespaces

logger = logging.getLogger("lmserve.api")


# -- llm and embedding ----------------------------------------------------------------------------


async def list_loaded(ctx: Context, _: Any) -> Any:
    return [
        instance_info(ctx.models, model, ctx.domain) for model in loaded_in(ctx.models, ctx.domain)
    ]


async def get_model_info(ctx: Context, param: ModelInfoParameter) -> Any:
    model = find_instance(param.specifier, ctx.models, ctx.domain)
    if model is not None:
        return instance_info(ctx.models, model, ctx.domain)
    if param.throwIfNotFound:
        query = param.specifier.model_dump(exclude_none=True)
        raise no_model_matching(query.get("query", query), loaded_names(ctx.models))
    return VOID


async def get_load_config(ctx: Context, param: SpecifierParameter) -> Any:
    model = find_instance(param.specifier, ctx.models, ctx.domain)
    if model is None:
        query = param.specifier.model_dump(exclude_none=True)
        raise no_model_matching(query.get("query", query), loaded_names(ctx.models))
    return load_config(model, ctx.domain)


async def _tokens(ctx: Context, param: TokenizeParameter, *, counting: bool = False) -> list[int]:
    """The tokens of a text as the model reads it.  In the ``embedding`` namespace, as LM
    Studio counts them: ``tokenize`` gives what the model embeds, its special tokens included
    (a BERT's ``[CLS]`` and ``[SEP]``), ``countTokens`` the text's own."""
    name = wanted_name(param.specifier, ctx.models, ctx.domain)
    async with ctx.models.using(name) as model:
        special = model.vocab.add_bos and not (counting and ctx.domain == "embedding")
        return await model.engine.tokenize(param.inputString, add_special=special)


async def tokenize(ctx: Context, param: TokenizeParameter) -> Any:
    return {"tokens": await _tokens(ctx, param)}


async def count_tokens(ctx: Context, param: TokenizeParameter) -> Any:
    return {"tokenCount": len(await _tokens(ctx, param, counting=True))}


async def apply_prompt_template(ctx: Context, param: ApplyTemplateParameter) -> Any:
    """The prompt a prediction of this history would give the model, rendered by the same
    code (its chat template, tools and all)."""
    name = wanted_name(param.specifier, ctx.models, "llm")
    settings = prediction(flatten(param.predictionConfigStack))
    fields = dict(settings.fields)
    if param.opts.toolDefinitions:
        fields["tools"] = [
            tool.model_dump(exclude_none=True) for tool in param.opts.toolDefinitions
        ]
    history = chat_messages(param.history, skip_files=True)
    messages = with_system_prompt(history, settings.system_prompt)
    body = build_chat_request(model=name, messages=messages, **fields)
    async with ctx.models.using(name) as model:
        prompt = (await prepare_chat(body, model)).prompts[0]
        bos, eos = model.template.bos_token, model.template.eos_token
    if param.opts.omitBosToken and bos and prompt.startswith(bos):
        prompt = prompt[len(bos) :]
    if param.opts.omitEosToken and eos and prompt.endswith(eos):
        prompt = prompt[: -len(eos)]
    return {"formatted": prompt}


async def embed_string(ctx: Context, param: EmbedParameter) -> Any:
    name = wanted_name(param.modelSpecifier, ctx.models, "embedding")
    answer = await create_embeddings(
        EmbeddingRequest(model=name, input=param.inputString), ctx.models
    )
    return {"embedding": answer["data"][0]["embedding"]}


async def preload_draft_model(ctx: Context, param: PreloadDraftParameter) -> Any:
    """Load a draft model into the model's worker ahead of the predictions that name it."""
    async with ctx.models.using(wanted_name(param.specifier, ctx.models, "llm")) as model:
        await ctx.models.attach_draft(model, param.draftModelKey)
    return VOID


def _model_namespace() -> tuple[dict[str, Rpc], dict[str, ChannelEndpoint]]:
    rpcs = {
        "listLoaded": Rpc(None, list_loaded),
        "getModelInfo": Rpc(ModelInfoParameter, get_model_info),
        "getLoadConfig": Rpc(SpecifierParameter, get_load_config),
        "unloadModel": Rpc(UnloadParameter, unload_model),
        "tokenize": Rpc(TokenizeParameter, tokenize),
        "countTokens": Rpc(TokenizeParameter, count_tokens),
    }
    channels = {
        "loadModel": ChannelEndpoint(LoadModelParameter, load_model),
        "getOrLoad": ChannelEndpoint(GetOrLoadParameter, get_or_load),
    }
    return rpcs, channels


def namespaces() -> dict[str, Namespace]:
    """Every namespace's endpoints."""
    llm_rpcs, llm_channels = _model_namespace()
    llm_rpcs["applyPromptTemplate"] = Rpc(ApplyTemplateParameter, apply_prompt_template)
    llm_rpcs["preloadDraftModel"] = Rpc(PreloadDraftParameter, preload_draft_model)
    llm_channels["predict"] = ChannelEndpoint(PredictParameter, predict)
    embedding_rpcs, embedding_channels = _model_namespace()
    embedding_rpcs["embedString"] = Rpc(EmbedParameter, embed_string)
    return {
        "llm": Namespace(llm_rpcs, llm_channels),
        "embedding": Namespace(embedding_rpcs, embedding_channels),
        **system_namespaces(),
        "repository": repository_namespace(),
        "plugins": plugins_namespace(),
    }
