"""The endpoints LM Studio's server has, by namespace: those its SDKs (1.5.0) call.

What a frame for an endpoint gets depends on which of three it is:

- one lmserve serves (:mod:`lmserve.api.lmstudio_ws.service`): its answer;
- one LM Studio has and lmserve does not serve: an error on the call or channel, naming it,
  so a client learns at once why (rather than waiting for an answer that never comes);
- one LM Studio does not have: what LM Studio gives it, no answer and one
  ``communicationWarning`` ("Received channelCreate for unknown endpoint, endpoint = X"),
  which the SDKs log as an error.  The SDKs have no signal endpoints, so every signal
  subscription is of this kind.

Read from the JavaScript SDK's backend interfaces (``create*BackendInterface`` in
``@lmstudio/sdk`` 1.5.0); ``llm`` and ``embedding`` share the base model interface.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Known:
    rpcs: frozenset[str]
    channels: frozenset[str]


_MODEL_RPCS = {"unloadModel", "listLoaded", "getModelInfo", "getLoadConfig", "tokenize"}
_MODEL_RPCS |= {"countTokens"}
_MODEL_CHANNELS = {"loadModel", "getOrLoad"}

LM_STUDIO: dict[str, Known] = {
    "llm": Known(
        frozenset(_MODEL_RPCS | {"applyPromptTemplate", "preloadDraftModel"}),
        frozenset(_MODEL_CHANNELS | {"predict"}),
    ),
    "embedding": Known(frozenset(_MODEL_RPCS | {"embedString"}), frozenset(_MODEL_CHANNELS)),
    "system": Known(
        frozenset(
            {
                "listDownloadedModels",
                "notify",
                "version",
                "setExperimentFlag",
                "getExperimentFlags",
                "startHttpServer",
                "stopHttpServer",
            }
        ),
        frozenset({"alive"}),
    ),
    "diagnostics": Known(frozenset(), frozenset({"streamLogs"})),
    "files": Known(
        frozenset({"getLocalFileAbsolutePath", "uploadFileBase64", "getDocumentParsingLibrary"}),
        frozenset({"retrieve", "parseDocument"}),
    ),
    "repository": Known(
        frozenset(
            {
                "searchModels",
                "getModelDownloadOptions",
                "installPluginDependencies",
                "getLocalArtifactFiles",
                "loginWithPreAuthenticatedKeys",
            }
        ),
        frozenset(
            {
                "downloadModel",
                "downloadArtifact",
                "pushArtifact",
                "ensureAuthenticated",
                "createArtifactDownloadPlan",
            }
        ),
    ),
    "plugins": Known(
        frozenset(
            {
                "reindexPlugins",
                "processingHandleUpdate",
                "processingHandleRequest",
                "processingPullHistory",
                "processingGetOrLoadTokenSource",
                "processingHasStatus",
                "processingNeedsNaming",
                "processingSuggestName",
                "processingSetSenderName",
                "setConfigSchematics",
                "setGlobalConfigSchematics",
                "pluginInitCompleted",
            }
        ),
        frozenset(
            {
                "startToolUseSession",
                "generateWithGenerator",
                "registerDevelopmentPlugin",
                "setPromptPreprocessor",
                "setPredictionLoopHandler",
                "setToolsProvider",
                "setGenerator",
            }
        ),
    ),
}
