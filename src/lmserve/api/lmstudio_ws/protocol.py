"""The frames of LM Studio's WebSocket protocol, and the parameters of the endpoints served.

Field names are the wire's own (camelCase), in the order of ``@lmstudio/sdk``'s schemas.
Unknown fields are ignored, as the SDKs' own parsers do, so a newer client never breaks; a
value of the wrong type is a validation error, which the session answers in the SDK's error
shape on the call or channel that sent it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Id = Annotated[int, Field(ge=0, le=2**53)]
Key = Annotated[str, Field(min_length=1, max_length=1024)]


class Frame(BaseModel):
    model_config = ConfigDict(extra="ignore")


# -- client to server ---------------------------------------------------------------------------


class AuthPacket(Frame):
    authVersion: Literal[1]
    clientIdentifier: str = Field(max_length=1024)
    clientPasskey: str = Field(max_length=1024)


class RpcCall(Frame):
    type: Literal["rpcCall"]
    endpoint: str
    callId: Id
    parameter: Any = None


class ChannelCreate(Frame):
    type: Literal["channelCreate"]
    endpoint: str
    channelId: Id
    creationParameter: Any = None


class ChannelSend(Frame):
    type: Literal["channelSend"]
    channelId: Id
    message: Any = None
    ackId: Id | None = None


class ChannelAck(Frame):
    type: Literal["channelAck"]
    channelId: Id
    ackId: Id


class KeepAlive(Frame):
    type: Literal["keepAlive"]


class CommunicationWarning(Frame):
    type: Literal["communicationWarning"]
    warning: str


class SignalSubscribe(Frame):
    type: Literal["signalSubscribe", "writableSignalSubscribe"]
    endpoint: str
    subscribeId: Id
    creationParameter: Any = None


class SignalOther(Frame):
    type: Literal["signalUnsubscribe", "writableSignalUnsubscribe", "writableSignalUpdate"]
    subscribeId: Id


# Each frame's model by its ``type``.
FRAMES: dict[str, type[Frame]] = {
    "rpcCall": RpcCall,
    "channelCreate": ChannelCreate,
    "channelSend": ChannelSend,
    "channelAck": ChannelAck,
    "keepAlive": KeepAlive,
    "communicationWarning": CommunicationWarning,
    "signalSubscribe": SignalSubscribe,
    "writableSignalSubscribe": SignalSubscribe,
    "signalUnsubscribe": SignalOther,
    "writableSignalUnsubscribe": SignalOther,
    "writableSignalUpdate": SignalOther,
}


# -- what the endpoints take --------------------------------------------------------------------


class ModelQuery(Frame):
    domain: str | None = None
    identifier: Key | None = None
    path: Key | None = None
    vision: bool | None = None


class QuerySpecifier(Frame):
    type: Literal["query"]
    query: ModelQuery


class InstanceSpecifier(Frame):
    type: Literal["instanceReference"]
    instanceReference: Key


ModelSpecifier = Annotated[QuerySpecifier | InstanceSpecifier, Field(discriminator="type")]


class KvField(Frame):
    key: str = Field(max_length=256)
    value: Any = None


class KvConfig(Frame):
    fields: list[KvField] = Field(default_factory=list, max_length=1024)


class KvLayer(Frame):
    layerName: str = Field(max_length=64)
    config: KvConfig


class KvStack(Frame):
    layers: list[KvLayer] = Field(default_factory=list, max_length=64)


class TextPart(Frame):
    type: Literal["text"]
    text: str


class FilePart(Frame):
    type: Literal["file"]
    name: str = ""
    identifier: str = ""
    fileType: str = ""


class ToolCallRequest(Frame):
    id: str | None = Field(default=None, max_length=256)
    type: Literal["function"] = "function"
    name: str = Field(min_length=1, max_length=256)
    arguments: dict[str, Any] | None = None


class ToolCallRequestPart(Frame):
    type: Literal["toolCallRequest"]
    toolCallRequest: ToolCallRequest


class ToolCallResultPart(Frame):
    type: Literal["toolCallResult"]
    content: str
    toolCallId: str | None = Field(default=None, max_length=256)


Part = Annotated[
    TextPart | FilePart | ToolCallRequestPart | ToolCallResultPart,
    Field(discriminator="type"),
]


class HistoryMessage(Frame):
    role: Literal["system", "user", "assistant", "tool"]
    content: list[Part] = Field(max_length=4096)


class ChatHistory(Frame):
    messages: list[HistoryMessage] = Field(max_length=4096)


class PredictParameter(Frame):
    modelSpecifier: ModelSpecifier
    history: ChatHistory
    predictionConfigStack: KvStack = Field(default_factory=KvStack)
    fuzzyPresetIdentifier: str | None = None
    ignoreServerSessionConfig: bool | None = None


class LoadModelParameter(Frame):
    modelKey: Key
    identifier: Key | None = None
    ttlMs: int | None = Field(default=None, ge=1)
    loadConfigStack: KvStack = Field(default_factory=KvStack)


class GetOrLoadParameter(Frame):
    identifier: Key
    loadTtlMs: int | None = Field(default=None, ge=1)
    loadConfigStack: KvStack = Field(default_factory=KvStack)


class UnloadParameter(Frame):
    identifier: Key


class ModelInfoParameter(Frame):
    specifier: ModelSpecifier
    throwIfNotFound: bool = False


class SpecifierParameter(Frame):
    specifier: ModelSpecifier


class PreloadDraftParameter(Frame):
    specifier: ModelSpecifier
    draftModelKey: str = Field(min_length=1)


class TokenizeParameter(Frame):
    specifier: ModelSpecifier
    inputString: str


class EmbedParameter(Frame):
    modelSpecifier: ModelSpecifier
    inputString: str


class UploadFileParameter(Frame):
    """``files.uploadFileBase64``: what ``client.files.prepare_image`` sends."""

    name: str = Field(max_length=1024)
    contentBase64: str


class SearchOpts(Frame):
    searchTerm: str | None = Field(default=None, max_length=500)  # words, or a hub URL
    limit: int | None = Field(default=None, gt=0, le=25)
    compatibilityTypes: list[str] | None = Field(default=None, max_length=16)


class SearchModelsParameter(Frame):
    """``repository.searchModels``: what ``client.repository.search_models`` sends."""

    opts: SearchOpts


class SearchResultIdentifier(Frame):
    type: Literal["catalog", "hf"]
    identifier: str = Field(min_length=1, max_length=500)


class DownloadOptionsParameter(Frame):
    modelSearchResultIdentifier: SearchResultIdentifier


class DownloadModelParameter(Frame):
    downloadIdentifier: str = Field(min_length=1, max_length=1000)


class FunctionTool(Frame):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolDefinition(Frame):
    type: Literal["function"]
    function: FunctionTool


class PromptTemplateOpts(Frame):
    omitBosToken: bool | None = None
    omitEosToken: bool | None = None
    toolDefinitions: list[ToolDefinition] | None = Field(default=None, max_length=128)


class ApplyTemplateParameter(Frame):
    specifier: ModelSpecifier
    history: ChatHistory
    predictionConfigStack: KvStack = Field(default_factory=KvStack)
    opts: PromptTemplateOpts = Field(default_factory=PromptTemplateOpts)


# -- plugins ------------------------------------------------------------------------------------


class RegisterPluginParameter(Frame):
    manifest: dict[str, Any]


class PluginParameter(Frame):
    """A client's use of a plugin: which (``owner/name``), and its config (not read yet)."""

    pluginIdentifier: str = Field(min_length=1, max_length=256)
    pluginConfigSpecifier: Any = None


class GenerateWithGeneratorParameter(PluginParameter):
    tools: list[ToolDefinition] = Field(default_factory=list, max_length=128)
    history: ChatHistory


class SchematicsParameter(Frame):
    schematics: Any = None


class ProcessingParameter(Frame):
    """A hook's call about the prediction it serves: its processing context and token."""

    pci: str = Field(max_length=256)
    token: str = Field(max_length=256)


class PullHistoryParameter(ProcessingParameter):
    includeCurrent: bool = False


class HandleUpdateParameter(ProcessingParameter):
    update: dict[str, Any]


class CancelPacket(Frame):
    """What a client sends on a channel: ``cancel`` (``stop`` on a log stream)."""

    type: Literal["cancel", "stop"]
