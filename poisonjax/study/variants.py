"""Study variants: named sets of run-config overrides, crossed with the grid.

A variant says what the grid's four axes cannot, e.g. where the poisons go
(config.poison.placement). `study.variants` maps a name to overrides shaped
like the run config, e.g. {"poison": {"placement": "last",
"placement_fraction": 0.1}}; `study.variant_order` lists the names in the
order runs and reports take them (`set_variants` sets both from an ordered
dict; without an order the names are sorted). Every grid point runs once per
variant, and the variant's name ends its run's name (`..._var=last10`).

A study without variants has one unnamed variant (NONE) with no overrides:
its run names are exactly those from before variants existed.
"""

from __future__ import annotations

import difflib
import re

import ml_collections

from poisonjax.errors import UserError

NONE = ""  # The one, unnamed variant of a study without variants.
# Filesystem-safe, no '_' (the run name's separator).
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.\-]*$")


def set_variants(study, variants: dict) -> None:
  """study.variants and study.variant_order from {name: overrides}, in order."""
  study.variants = ml_collections.ConfigDict(
      {name: dict(overrides) for name, overrides in variants.items()})
  study.variant_order = tuple(variants)
  ordered(study)  # Bad names fail here, where the study file sets them.


def _check_name(name: str) -> None:
  if not _NAME_RE.match(name):
    raise UserError(f"study.variants: name {name!r} is not filesystem-safe; "
                    "use letters, digits, '.' and '-' (it ends run names)")
  try:
    float(name)
  except ValueError:
    return
  raise UserError(f"study.variants: name {name!r} reads as a number in "
                  "results.csv; start it with a letter, e.g. 'v" + name + "'")


def _as_dict(value) -> dict:
  return value.to_dict() if hasattr(value, "to_dict") else dict(value)


def ordered(study) -> list[tuple[str, dict]]:
  """(name, overrides) of every variant, in run order; [(NONE, {})] if none."""
  variants = study.get("variants", None)
  names = sorted(variants.keys()) if variants is not None else []
  if not names:
    return [(NONE, {})]
  order = tuple(study.get("variant_order", None) or ()) or tuple(names)
  if sorted(order) != names:
    raise UserError(f"study.variant_order={order!r}: must list each name of "
                    f"study.variants ({', '.join(names)}) once; set both with "
                    "study.set_variants(s, {name: overrides})")
  for name in order:
    _check_name(name)
  return [(name, _as_dict(variants[name])) for name in order]


def names(study) -> list[str]:
  return [name for name, _ in ordered(study)]


def leaves(overrides: dict, prefix: str = ""):
  """('section.field', value) for every leaf of a nested overrides dict."""
  for key, value in overrides.items():
    path = f"{prefix}{key}"
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      yield from leaves(_as_dict(value), path + ".")
    else:
      yield path, value


def _unknown(label: str, node, field: str) -> UserError:
  near = difflib.get_close_matches(field, list(node.keys()), n=1)
  hint = f"did you mean {near[0]!r}?" if near else "see poisonjax/config.py"
  return UserError(f"{label}: unknown config field; {hint}")


def apply(config, name: str, overrides: dict, owned: tuple = ()) -> None:
  """Sets a variant's overrides on a run config (in place).

  `owned`: dotted fields the grid sets (size, count, data amount, derived
  seeds); a variant may not change them, or its run name would lie. Every
  error is one UserError line naming the variant and the field.
  """
  for path, value in leaves(overrides):
    label = f"study.variants.{name}.{path}"
    if path in owned:
      raise UserError(f"{label}: set by the study's grid; vary it in "
                      "study.grid, not in a variant")
    *sections, field = path.split(".")
    node = config
    for section in sections:
      if section not in node:
        raise _unknown(label, node, section)
      if not isinstance(node[section], ml_collections.ConfigDict):
        raise UserError(f"{label}: {section!r} is a field, not a section")
      node = node[section]
    if field not in node:
      raise _unknown(label, node, field)
    if isinstance(node[field], ml_collections.ConfigDict):
      raise UserError(f"{label}: a section, not a field; set its fields")
    try:
      node[field] = value
    except TypeError:
      raise UserError(f"{label}={value!r}: wrong type; the field holds a "
                      f"{type(node[field]).__name__}") from None
