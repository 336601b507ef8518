"""What a server holds: one base model, its side-by-side role adapters, the router and the engine.

`load_state(model, adapters, ...)` loads the base once, resolves each adapter name in the
registry (`oracle` = its newest version, `oracle@3`), attaches them all with
`attach_multi_lora` and starts the decode engine. Model ids: the base's name, `iceburg-<role>`
for each adapter, and `iceburg-auto` when a router was trained for the adapters directory.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from iceburg_mlx.errors import AdapterError
from iceburg_mlx.serve.protocol import APIError, Limits
from iceburg_mlx.templates import with_system

log = logging.getLogger(__name__)
PREFIX, AUTO = "iceburg-", "iceburg-auto"


@dataclass(frozen=True)
class ServedModel:
    id: str
    slot: int                    # adapter slot in the batch (0 = the base)
    role: str | None = None
    version: int | None = None
    path: str | None = None
    system_prompt: str | None = None   # the role's training prompt, used when a chat request has none

    def with_system(self, messages: list[dict]) -> list[dict]:
        """`messages` with the role's system prompt first when they carry no system message."""
        return with_system(messages, self.system_prompt)

    def card(self, base_id: str, created: int) -> dict:
        card = {"id": self.id, "object": "model", "created": created, "owned_by": "iceburg-mlx"}
        if self.role is not None:
            card.update({"root": base_id, "parent": base_id, "iceburg_role": self.role,
                         "iceburg_adapter": f"{self.role}@{self.version}", "version": self.version})
        return card


@dataclass
class ServerState:
    tokenizer: object
    engine: object               # iceburg_mlx.serve.engine.Engine
    base_id: str
    models: dict[str, ServedModel]     # by id
    router: object | None = None       # iceburg_mlx.serve.router.Router
    limits: Limits = field(default_factory=Limits)
    api_key: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def roles(self) -> list[str]:
        return [m.role for m in self.models.values() if m.role is not None]

    def model_cards(self) -> list[dict]:
        cards = [m.card(self.base_id, self.created) for m in self.models.values()]
        if self.router is not None:
            cards.append({"id": AUTO, "object": "model", "created": self.created, "owned_by": "iceburg-mlx",
                          "root": self.base_id, "iceburg_roles": self.router_roles(),
                          "iceburg_router_accuracy": self.router.accuracy_among(self.router_roles())})
        return cards

    def router_roles(self) -> list[str]:
        return [r for r in self.router.roles if r in self.roles] if self.router is not None else []

    def lookup(self, model: str, route_text: str) -> ServedModel:
        """The served model a request names; `iceburg-auto` asks the router. APIError 404 if unknown."""
        if model == AUTO and self.router is not None and self.router_roles():
            role, _ = self.router.route(route_text, self.router_roles())
            return self.models[PREFIX + role]
        found = self.models.get(model)
        if found is None and "@" in model:   # iceburg-oracle@3 names the loaded version exactly
            name, _, ver = model.rpartition("@")
            m = self.models.get(name)
            found = m if m is not None and m.role is not None and ver == str(m.version) else None
        if found is None:
            have = ", ".join(c["id"] for c in self.model_cards())
            raise APIError(404, f"The model '{model}' does not exist on this server (have: {have})",
                           param="model", code="model_not_found")
        return found


def base_name(spec: str | None, source) -> str:
    name = spec or getattr(source, "spec", None) or "base"
    return Path(name).stem if ("/" in name or name.endswith(".gguf")) else name


def resolve_adapters(names: Sequence[str] | None, adapters_dir: str | os.PathLike | None):
    """Registry refs for `names` (None: every role's newest version)."""
    from iceburg_mlx.adapters import registry

    if names is None:
        names = registry.roles(adapters_dir)
    refs = [registry.get(n.strip(), adapters_dir) for n in names if n.strip()]
    roles = [r.role for r in refs]
    dup = sorted({r for r in roles if roles.count(r) > 1})
    if dup:
        raise AdapterError(f"one version per role can be served; {', '.join(dup)} named twice")
    return refs


def load_state(model: str | None = None, adapters: Sequence[str] | None = None,
               adapters_dir: str | os.PathLike | None = None, limits: Limits | None = None,
               api_key: str | None = None, max_batch: int = 32, use_router: bool = True,
               force: bool = False, role_prompts: bool = True) -> ServerState:
    """Load the base, attach `adapters` (registry names; None = all roles) side by side, start the engine.

    An adapter trained on another base is refused (AdapterError) unless `force` (then logged).
    With `role_prompts`, a chat request to `iceburg-<role>` without a system message gets the
    system prompt the adapter was trained with (as `generate --adapter` does)."""
    from iceburg_mlx.adapters import check_base, role_system_prompt
    from iceburg_mlx.models import load_model
    from iceburg_mlx.serve.engine import Engine
    from iceburg_mlx.serve.multi_lora import AdapterSpec, attach_multi_lora
    from iceburg_mlx.serve.router import load_router
    from iceburg_mlx.adapters.registry import adapters_root

    limits = limits or Limits()
    refs = resolve_adapters(adapters, adapters_dir)
    loaded = load_model(model)
    for r in refs:
        warning = check_base(r.path, loaded.source.spec, loaded.source.path, r.name, force, loaded.model)
        if warning:
            log.warning("%s", warning)
    selector = attach_multi_lora(loaded.model, [AdapterSpec(r.role, r.path) for r in refs]) if refs else None
    base_id = base_name(model, loaded.source)
    models = {base_id: ServedModel(base_id, 0)}
    for slot, r in enumerate(refs, start=1):
        prompt = role_system_prompt(str(r.path)) if role_prompts else None
        models[PREFIX + r.role] = ServedModel(PREFIX + r.role, slot, r.role, r.version, str(r.path), prompt)
    ctx = loaded.config.get("max_position_embeddings")
    if isinstance(ctx, int) and ctx > 0:
        limits.max_context = min(limits.max_context, ctx)
    router = load_router(adapters_root(adapters_dir)) if use_router and refs else None
    engine = Engine(loaded.model, loaded.tokenizer, selector.set if selector else None,
                    max_batch=max_batch, max_pending=limits.max_pending).start()
    log.info("serving %s with %d adapters%s", base_id, len(refs), " and a router" if router else "")
    return ServerState(loaded.tokenizer, engine, base_id, models, router, limits, api_key)
