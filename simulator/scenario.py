"""Scenario YAML -> typed, frozen, validated objects. The only place configuration enters.

Strict: an unknown key, a wrong type, a non-positive size or bandwidth, an unknown model, device
or link name, a device index that does not exist, a strategy option out of range or a partition
that does not cover the layers is a :class:`ScenarioError` naming the file, line, field path and
bad value. Units live in key names and become SI here. ``docs/scenarios.md`` lists every key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import networkx as nx

from simulator import catalogue, limits, topology_file
from simulator.convergence import check_scheme
from simulator.convergence_file import convergence_field, target_field
from simulator.errors import ScenarioError
from simulator.profile import Profile, load_profile
from simulator.schema import (
    Fields,
    any_string,
    boolean,
    choice,
    did_you_mean,
    integer,
    list_of,
    number,
    string,
)
from simulator.specs import (
    ClusterSpec,
    DegradedLink,
    DeviceSpec,
    LinkSpec,
    ModelSpec,
    NodeMeasurements,
    ParameterServerSpec,
    Scenario,
    Straggler,
    StrategySpec,
    TrainingSpec,
)
from simulator.units import BYTES_PER_ELEMENT
from simulator.yaml_input import join, line_of, load_yaml, read_text

TOP_KEYS = ("name", "description", "seed", "model", "cluster", "training", "strategies",
            "sweep", "search", "data")


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; every error names ``path``."""
    path = Path(path)
    text = read_text(path, "scenario")
    try:
        return parse_scenario(load_yaml(text), str(path))
    except ScenarioError as e:
        raise (e if e.file else e.with_file(str(path))) from None


def parse_scenario(data: Any, file: str = "<scenario>") -> Scenario:
    """Validate parsed YAML (from :func:`load_yaml`); an error without a line gets the line of
    the deepest part of its field path found in ``data``."""
    try:
        return _scenario(data, file)
    except ScenarioError as e:
        if e.file is not None:  # from another file (the catalogue): its lines are not ours
            raise
        raise e.at_line(line_of(data, e.path)) from None


def _scenario(data: Any, file: str) -> Scenario:
    top = Fields(data, "")
    name = top.get("name", string)
    description = top.get("description", any_string, "")
    seed = top.get("seed", integer(0), 0)
    model = _model(top.sub("model"))
    cluster = _cluster(top.sub("cluster"), file)
    training = _training(top.sub("training"), file)
    strategies = _strategies(top, cluster)
    sweep = _sweep(top.sub("sweep")) if top.has("sweep") else ()
    search = _search(top.sub("search")) if top.has("search") else {}
    data = _data(top)
    top.done(TOP_KEYS)
    scenario = Scenario(name=name, description=description, seed=seed, model=model,
                        cluster=cluster, training=training, strategies=strategies, file=file,
                        sweep=sweep, search=search, data=data)
    _check_against_graph(scenario)
    return scenario


def build_graph(model: ModelSpec) -> nx.DiGraph:
    """The model graph a ModelSpec names (zoo or custom layer list)."""
    from simulator.model import build_custom, build_zoo

    if model.layers is not None:
        return build_custom(list(model.layers), model.input_shape, path="model")
    assert model.zoo is not None
    return build_zoo(model.zoo, dict(model.params))


# ---- model -------------------------------------------------------------------------------------

def _model(f: Fields) -> ModelSpec:
    if f.has("zoo") == f.has("layers"):
        raise ScenarioError("give exactly one of 'zoo' (a named network) or 'layers' (a list)",
                            path=f.path or "model", line=f.line("zoo"))
    if f.has("zoo"):
        zoo = f.get("zoo", string)
        params = f.raw("params") if f.has("params") else {}
        if not isinstance(params, dict):
            raise f.error("params", "must be a mapping of the network's parameters")
        depth = params.get("layers")
        sizes = params.get("sizes")
        if limits.active() and ((isinstance(depth, int) and depth > limits.LAYERS)
                                or (isinstance(sizes, list) and len(sizes) > limits.LAYERS)):
            key = "layers" if isinstance(depth, int) and depth > limits.LAYERS else "sizes"
            raise ScenarioError(f"more than {limits.LAYERS:,} layers, the limit; {limits.LIFT}",
                                path=f"{f.path}.params.{key}",
                                value=depth if key == "layers" else f"{len(sizes):,} sizes",
                                has_value=True, line=f.line("params"))
        f.done(("zoo", "params"))
        return ModelSpec(zoo=zoo, params=dict(params))
    layers = f.raw("layers")
    if not isinstance(layers, list) or not layers:
        raise f.error("layers", "must be a non-empty list of layers")
    if limits.active() and len(layers) > limits.LAYERS:
        raise f.error("layers", f"{len(layers):,} layers, more than the limit of "
                      f"{limits.LAYERS:,}; {limits.LIFT}", has_value=False)
    shape = f.get("input_shape", list_of(integer(1)))
    f.done(("layers", "input_shape"))
    return ModelSpec(zoo=None, layers=tuple(layers), input_shape=tuple(shape))


# ---- cluster -----------------------------------------------------------------------------------

def _named_or_inline(f: Fields, key: str, table: dict, reader, kind: str,  # noqa: ANN001, ANN202
                     default=None):  # noqa: ANN001
    if default is not None and not f.has(key):
        return default
    value = f.raw(key)
    if isinstance(value, str):
        if value not in table:
            raise f.error(key, f"unknown {kind}{did_you_mean(value, table)} (catalogue has: "
                               f"{', '.join(sorted(table))})")
        return table[value]
    sub = f.sub(key)
    if sub.has("base"):
        base_name = sub.get("base", string)
        if base_name not in table:
            raise sub.error("base", f"unknown {kind}{did_you_mean(base_name, table)} (catalogue "
                                    f"has: {', '.join(sorted(table))})")
        return reader(f"{base_name}*", sub, table[base_name])
    return reader("inline", sub)


def device_field(f: Fields, key: str, profile: Profile | None = None) -> DeviceSpec:
    table = {**catalogue.devices(), **(profile.devices if profile else {})}
    return _named_or_inline(f, key, table, catalogue.read_device, "device",
                            profile.device if profile else None)


def link_field(f: Fields, key: str, scope: str, profile: Profile | None = None) -> LinkSpec:
    table = {**catalogue.links(), **(profile.links if profile else {})}
    link = _named_or_inline(f, key, table, catalogue.read_link, "link",
                            profile.link(scope) if profile else None)
    if link.scope != scope:
        given = f.raw(key)
        which = repr(given) if isinstance(given, str) else "this link"
        raise f.error(key, f"{which} is an {link.scope}-node link; this field needs an "
                      f"{scope}-node link", value=given)
    return link


def _profile(f: Fields, file: str) -> Profile | None:
    """``cluster.profile``: a calibration profile, relative to the scenario's folder."""
    if not f.has("profile"):
        return None
    name = f.get("profile", string)
    path = Path(name)
    if not path.is_absolute() and file and not file.startswith("<"):
        path = Path(file).parent / path
    if not path.is_file():
        raise f.error("profile", f"no such calibration profile ({path}); write one with "
                      "`mpiexec -n 2 parasim calibrate -o FILE`")
    try:
        return load_profile(path)
    except ScenarioError as e:  # the profile's own error, told as this field's
        raise f.error("profile", f"not a usable calibration profile: {e}", has_value=False
                      ) from None


def _cluster(f: Fields, file: str = "<scenario>") -> ClusterSpec:
    profile = _profile(f, file)
    nodes = f.get("nodes", integer(1))
    links = {**catalogue.links(), **(profile.links if profile else {})}
    node = topology_file.node_field(f, catalogue.nodes(), links, catalogue.read_link)
    per_node = f.get("devices_per_node", integer(1), node.devices if node else ...)
    if node is not None and per_node != node.devices:
        raise f.error("devices_per_node", f"the node {node.name!r} holds {node.devices} "
                      "devices")
    if limits.active() and nodes * per_node > limits.DEVICES:
        raise f.error("nodes", f"{nodes:,} nodes x {per_node:,} devices per node = "
                      f"{nodes * per_node:,} devices, more than the limit of "
                      f"{limits.DEVICES:,}; {limits.LIFT}", has_value=False)
    device = (catalogue.devices()[node.device] if node is not None and node.device
              and not f.has("device") and profile is None else device_field(f, "device", profile))
    intra = (next(e[2] for e in node.edges if e[0] == "gpu0") if node is not None
             and not f.has("intra_link") else link_field(f, "intra_link", "intra", profile))
    has_inter = f.has("inter_link") or (profile is not None and profile.link("inter"))
    inter = (link_field(f, "inter_link", "inter", profile) if has_inter or nodes > 1
             else None)
    nics = f.get("nics_per_node", integer(1), node.nics if node and node.nics else 1)
    if node is not None and node.nics and nics != node.nics:
        raise f.error("nics_per_node", f"the node {node.name!r} has {node.nics} NICs")
    if limits.active() and nodes * nics > limits.DEVICES:
        raise f.error("nics_per_node", f"{nodes:,} nodes x {nics:,} NICs = {nodes * nics:,} "
                      f"NICs, more than the limit of {limits.DEVICES:,}; {limits.LIFT}")
    host = link_field(f, "host_link", "intra", profile) if f.has("host_link") else None
    if host is not None and node is not None:
        raise f.error("host_link", "comes with the flat node; a described node says where "
                      "its NICs sit (cluster.node.nics)")
    jitter = f.get("compute_jitter", number(positive=False, minimum=0.0, maximum=1.0), 0.0)
    cores = f.get("cores_per_node", integer(1), profile.cores_per_node if profile else 0)
    ps = None
    if f.has("parameter_servers"):
        pf = f.sub("parameter_servers")
        hosts = pf.get("hosts", integer(1))
        if limits.active() and hosts > limits.DEVICES:
            raise pf.error("hosts", f"more than the limit of {limits.DEVICES:,} hosts; "
                           f"{limits.LIFT}")
        ps = ParameterServerSpec(hosts=hosts,
                                 device=device_field(pf, "device", profile),
                                 nic=link_field(pf, "nic", "inter", profile))
        pf.done(("hosts", "device", "nic"))
    if node is not None and not node.nics and (nodes > 1 or ps):
        raise f.error("node", "has no NICs to reach the other nodes or the parameter "
                      "servers", value=node.name)
    count = nodes * per_node
    straggler_fields = _items(f, "stragglers")
    stragglers = tuple(_straggler(s, count) for s in straggler_fields)
    _unique(straggler_fields, "device", "straggler")
    degraded_fields = _items(f, "degraded_links")
    degraded = tuple(_degraded(s) for s in degraded_fields)
    _unique(degraded_fields, "element", "degraded_links entry")
    if inter is None:  # one node and no inter-node link given: the NIC still exists for PS traffic
        inter = ps.nic if ps else catalogue.links()["eth_10g"]
    fabric = topology_file.fabric_field(f, file, nodes, nics, ps.hosts if ps else 0, links,
                                        catalogue.read_link)
    f.done(("nodes", "devices_per_node", "device", "intra_link", "inter_link", "nics_per_node",
            "host_link", "node", "fabric",
            "parameter_servers", "stragglers", "degraded_links", "compute_jitter",
            "cores_per_node", "profile"))
    spec = ClusterSpec(nodes=nodes, devices_per_node=per_node, device=device, intra_link=intra,
                       inter_link=inter, nics_per_node=nics, host_link=host,
                       parameter_servers=ps,
                       stragglers=stragglers, degraded_links=degraded,
                       compute_jitter=jitter, cores_per_node=cores,
                       profile=profile.file if profile else "",
                       profile_hosts=tuple(profile.calibration.get("hosts", ())) if profile
                       else (),
                       measured=profile.measured if profile else NodeMeasurements(),
                       node=node, fabric=fabric)
    from simulator.cluster import topology_elements

    elements = topology_elements(spec)
    for d, df in zip(degraded, degraded_fields, strict=True):
        if d.element not in elements:
            raise df.error("element", "no such element in the cluster (e.g. node0.gpu0, "
                           "node0.nic0, ps0)", value=d.element)
    return spec


def _items(f: Fields, key: str) -> list[Fields]:
    raw = f.raw(key)
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise f.error(key, "must be a list")
    path = join(f.path, key)
    return [Fields(item, join(path, i), getattr(item, "start_line", f.line(key)))
            for i, item in enumerate(raw)]


def _unique(items: list[Fields], key: str, what: str) -> None:
    """Reject a second entry with the same ``key`` value (the list names each thing once)."""
    first: dict[Any, str] = {}
    for item in items:
        value = item.data[key]
        if value in first:
            raise item.error(key, f"a second {what} for {key} {value!r} (the first is "
                             f"{first[value]})")
        first[value] = item.path


def _degraded(s: Fields) -> DegradedLink:
    out = DegradedLink(element=s.get("element", string),
                       factor=s.get("factor", number(maximum=1.0)))
    s.done(("element", "factor"))
    return out


def _straggler(s: Fields, count: int) -> Straggler:
    dev = s.get("device", integer(0))
    if dev >= count:
        raise s.error("device", f"no such device: the cluster has devices 0..{count - 1}")
    out = Straggler(device=dev, slowdown=s.get("slowdown", number(minimum=1.0)))
    s.done(("device", "slowdown"))
    return out


# ---- training and strategies ---------------------------------------------------------------------

def _training(f: Fields, file: str = "<scenario>") -> TrainingSpec:
    target = target_field(f.sub("target")) if f.has("target") else None
    if f.has("convergence") and target is None:
        raise f.error("convergence", "needs training.target: the coefficients say how many "
                      "steps reach it", has_value=False)
    t = TrainingSpec(
        batch_size=f.get("batch_size", integer(1)),
        precision=f.get("precision", choice(tuple(BYTES_PER_ELEMENT)), "fp32"),
        optimizer=f.get("optimizer", choice(("sgd", "momentum", "adam")), "momentum"),
        iterations=f.get("iterations", integer(1), 3),
        warmup_iterations=f.get("warmup_iterations", integer(0), 1),
        learning_rate=f.get("learning_rate", number(), 0.05),
        momentum=f.get("momentum", number(positive=False, minimum=0.0, maximum=0.999), 0.9),
        input_gradient=f.get("input_gradient", boolean, False),
        target=target,
        convergence=(convergence_field(f.sub("convergence"), target, file)
                     if f.has("convergence") else None),
    )
    f.done(("batch_size", "precision", "optimizer", "iterations", "warmup_iterations",
            "learning_rate", "momentum", "input_gradient", "target", "convergence"))
    return t


def _strategies(top: Fields, cluster: ClusterSpec) -> tuple[StrategySpec, ...]:
    from simulator.strategies import SCHEMES, scheme_module

    raw = top.raw("strategies")
    if not isinstance(raw, list) or not raw:
        raise top.error("strategies", "must be a non-empty list of strategies",
                        value=raw, has_value=True)
    out, names = [], set()
    for i, item in enumerate(raw):
        f = Fields(item, f"strategies[{i}]")
        name = f.get("name", string)
        if name in names:
            raise f.error("name", "two strategies have this name")
        names.add(name)
        scheme = f.get("scheme", choice(SCHEMES))
        options = {}
        for key, (check, default) in scheme_module(scheme).OPTIONS.items():
            options[key] = f.get(key, check, default)
        f.done(("name", "scheme", *scheme_module(scheme).OPTIONS))
        out.append(StrategySpec(name=name, scheme=scheme, options=options))
    return tuple(out)


def _check_against_graph(scenario: Scenario) -> None:
    """Options that can only be checked with the model graph and the cluster at hand.

    Errors name a field path (``model.params.sizes``, ``strategies[0].partition[1]``);
    :func:`parse_scenario` gives them the line of that field.
    """
    from simulator.strategies import scheme_module

    graph = build_graph(scenario.model)
    target = scenario.training.target
    for i, s in enumerate(scenario.strategies):
        if target is not None:
            check_scheme(target, s.scheme, s.name, "training.target.metric")
        scheme_module(s.scheme).check(s.options, graph, scenario.cluster, scenario.training,
                                      f"strategies[{i}]")


def _sweep(f: Fields) -> tuple[tuple[str, tuple], ...]:
    """``sweep``: ``devices`` (total device counts) and dotted field paths, each with a list of
    values, kept as written (units are converted when each point is loaded). Whether a path
    names a field that takes the value is checked when the sweep runs, by loading every point
    like a scenario file."""
    axes = []
    for key in list(f.data):
        if not isinstance(key, str) or not key:
            raise f.error(key, "must be 'devices' or a dotted field path", value=key)
        item = integer(1) if key == "devices" else number(positive=False)
        raw = f.raw(key)
        try:
            list_of(item)(raw, join(f.path, key))
        except ScenarioError as e:
            raise e.at_line(f.line(key)) from None
        axes.append((key, tuple(raw)))
    if not axes:
        raise ScenarioError("must name at least one field to sweep", path="sweep")
    f.done()
    return tuple(axes)


def _search(f: Fields) -> dict[str, Any]:
    """``search``: the constraints of ``parasim search`` (its command-line options override
    them), see docs/search.md."""
    from simulator.search.space import SCHEME_FAMILIES

    out = {
        "top": f.get("top", integer(1), 20),
        "devices": f.get("devices", integer(1), None),
        "batch": f.get("batch", list_of(integer(1)), None),
        "headroom": f.get("headroom", number(positive=False, minimum=0.0, maximum=0.9), 0.0),
        "exclude": f.get("exclude", list_of(choice(SCHEME_FAMILIES)), []),
        "synchronous_only": f.get("synchronous_only", boolean, False),
        "cross_node_tensor": f.get("cross_node_tensor", boolean, False),
    }
    f.done(tuple(out))
    return out


def _data(top: Fields) -> dict[str, Any]:
    """``data``: what the executor trains on (the simulator does not read it). Its keys are
    checked by the executor's loader (``executor/loaders.py``), which names the file and field."""
    raw = top.raw("data")
    if raw is None:
        return {}
    if not isinstance(raw, dict) or "kind" not in raw:
        raise top.error("data", "must be a mapping with a 'kind' (mnist, fashion_mnist, cifar10, "
                        "npz, digits, synthetic)")
    return dict(raw)


def with_profile(scenario_path: str, profile_path: str) -> Scenario:
    """The scenario with ``cluster.profile`` set to the profile (absolute) and the cluster's
    own device and link names dropped, so the measured ones apply. On a profile of one host
    (no inter-node link measured), the inter-node link and parameter-server NICs are the host
    itself: the intra link's bandwidth with no latency of their own (one shared-memory hop)."""
    path = Path(scenario_path)
    text = read_text(path, "scenario")
    profile = load_profile(profile_path)
    try:
        data = load_yaml(text)
        cluster = data.get("cluster") if isinstance(data, dict) else None
        if isinstance(cluster, dict):
            for key in ("device", "intra_link", "inter_link", "profile"):
                cluster.pop(key, None)
            cluster["profile"] = os.path.abspath(profile_path)
            if profile.link("inter") is None:
                cluster["inter_link"] = _same_host(profile)
            ps = cluster.get("parameter_servers")
            if isinstance(ps, dict):
                ps["device"] = profile.device.name
                ps["nic"] = profile.link("inter").name if profile.link("inter") else (
                    _same_host(profile))
        return parse_scenario(data, str(path))
    except ScenarioError as e:
        raise (e if e.file else e.with_file(str(path))) from None


def _same_host(profile: Any) -> dict[str, Any]:
    intra = profile.link("intra")
    return {"scope": "inter", "bandwidth_GBps": intra.bandwidth / 1e9, "latency_us": 0.0,
            "efficiency": intra.efficiency, "eager_limit_KiB": intra.eager_limit / 1024,
            "source": f"one host ({profile.file}): the hop is the intra link's shared memory"}
