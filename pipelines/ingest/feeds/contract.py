"""A shop's column contract: which columns of its export hold each product field (`data/shops/<shop>.yaml`).

    shop: hm                       # the shop's name: letters, digits, '_' and '-'
    file: articles.csv             # the export, relative to the export folder (for data/shops/: <data root>/<shop>/)
    format: csv                    # csv | tsv | jsonl | parquet | google-tsv | google-xml | shopify
    columns:                       # not given for google-* and shopify: their contract is fixed (standard.py)
      id: article_id               # a column name, or a mapping:
      title: prod_name
      description: detail_desc
      brand: {value: H&M}          #   value: a constant
      group: {column: product_code, prefix: "p:"}                     # prefix, casefold: true
      image: {template: "images/{article_id:.3}/{article_id}.jpg"}    # {column} or {column:.N} = first N characters
      gender:                      #   rules (first match wins), then map (case-insensitive) with a default
        rules: [{column: index_name, startswith: [Baby, Children], value: Kids}]
        column: index_group_name
        map: {Ladieswear: Women, Menswear: Men}
        default: Unisex
      native_path: {columns: [index_group_name, product_group_name]}  # or {column: c, separator: ">"}

A field may also say `optional: true` (the column may be absent: empty value), `fallback: [other columns]` (used
in turn while the value is empty), `parse: json_list | html` (the cell holds a JSON list / HTML) and `required:
true` (an empty value quarantines the row). `hook: words | google_gender` names a rule YAML cannot express (see
fields.py). Every problem of a contract is reported at once (ContractError), like a mapping table's.
"""
from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pipelines.ingest.feeds.standard import STANDARD_COLUMNS
from pipelines.ingest.shops import BadExport
from pipelines.settings import DATA

SHOPS_DIR = DATA / "shops"
TABLE_FORMATS = ("csv", "tsv", "jsonl", "parquet")
CONTRACT_FORMATS = TABLE_FORMATS + tuple(STANDARD_COLUMNS)
FIELDS = ("id", "title", "description", "brand", "gender", "image", "group", "native_path")
REQUIRED_FIELDS = ("id", "title")
SOURCES = ("column", "columns", "value", "template", "hook")
SPEC_KEYS = SOURCES + ("optional", "fallback", "parse", "separator", "prefix", "casefold", "map", "default",
                       "rules", "required")
PARSERS = ("json_list", "html")
HOOKS = {"words": "gender", "google_gender": "gender"}  # hook -> the field it computes
MAX_CONTRACT_BYTES = 1024 * 1024
SHOP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class ContractError(BadExport):
    """A shop contract that cannot be used; the message lists every problem found."""


@dataclass(frozen=True)
class Rule:
    column: str
    value: str
    equals: tuple[str, ...] = ()
    startswith: tuple[str, ...] = ()

    def matches(self, text: str) -> bool:
        return text in self.equals or (bool(text) and text.startswith(self.startswith))


@dataclass(frozen=True)
class FieldSpec:
    column: str | None = None
    columns: tuple[str, ...] = ()
    value: str | None = None
    template: str | None = None
    hook: str | None = None
    optional: bool = False
    fallback: tuple[str, ...] = ()
    parse: str | None = None
    separator: str | None = None
    prefix: str = ""
    casefold: bool = False
    map: dict = field(default_factory=dict)  # casefolded cell -> value
    default: str | None = None
    rules: tuple[Rule, ...] = ()
    required: bool = False

    def source_columns(self) -> list[str]:
        """Every column this field reads (template fields included)."""
        named = [self.column] if self.column else []
        named += list(self.columns) + list(self.fallback) + [r.column for r in self.rules]
        if self.template:
            named += [f for _, f, _, _ in string.Formatter().parse(self.template) if f]
        return list(dict.fromkeys(named))


@dataclass(frozen=True)
class ShopContract:
    shop: str
    file: str
    format: str
    fields: dict  # canonical field -> FieldSpec
    source: str = ""

    @property
    def required_columns(self) -> list[str]:
        """The columns the export must have: every column a non-optional field reads."""
        cols = [c for spec in self.fields.values() if not spec.optional for c in spec.source_columns()]
        return list(dict.fromkeys(cols))


def _text_list(value) -> tuple[str, ...] | None:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


def _check_template(template: str, where: str, errors: list):
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:
        errors.append(f"{where}: template {template!r}: {e}")
        return
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if not name or any(ch in name for ch in ".[]") or conversion or (spec and not re.fullmatch(r"\.\d{1,3}", spec)):
            errors.append(f"{where}: template field {{{name}{'!' + conversion if conversion else ''}"
                          f"{':' + spec if spec else ''}}} must be {{column}} or {{column:.N}}")


def _parse_rules(raw, where: str, errors: list) -> tuple[Rule, ...]:
    if not isinstance(raw, list):
        errors.append(f"{where}.rules: a list of {{column, equals|startswith, value}}")
        return ()
    rules = []
    for i, item in enumerate(raw):
        at = f"{where}.rules[{i}]"
        if not isinstance(item, dict) or set(item) - {"column", "equals", "startswith", "value"}:
            errors.append(f"{at}: keys are column, equals or startswith, value")
            continue
        equals, starts = _text_list(item.get("equals", [""])), _text_list(item.get("startswith", [""]))
        if not isinstance(item.get("column"), str) or not isinstance(item.get("value"), str) or not equals \
                or not starts or ("equals" in item) == ("startswith" in item):
            errors.append(f"{at}: needs a column, a value and one of equals/startswith (text or list of texts)")
            continue
        rules.append(Rule(item["column"], item["value"], equals if "equals" in item else (),
                          starts if "startswith" in item else ()))
    return tuple(rules)


def _spec_values(name: str, raw: dict, where: str, errors: list) -> dict:
    """The checked keyword values of one field's mapping (problems appended to `errors`)."""
    unknown = sorted(set(raw) - set(SPEC_KEYS))
    if unknown:
        errors.append(f"{where}: unknown keys {unknown} (known: {', '.join(SPEC_KEYS)})")
    sources = [k for k in SOURCES if k in raw]
    if len(sources) != 1 and not (sources == ["columns", "hook"]):
        errors.append(f"{where}: give exactly one of {', '.join(SOURCES)} (got {sources or 'none'})")
    out = {}
    for key in ("column", "value", "template", "hook", "parse", "separator", "prefix", "default"):
        if key in raw:
            if not isinstance(raw[key], str) or (key in ("column", "separator", "template") and not raw[key]):
                errors.append(f"{where}.{key}: must be a non-empty text")
            else:
                out[key] = raw[key]
    for key in ("columns", "fallback"):
        if key in raw:
            values = _text_list(raw[key])
            if values is None:
                errors.append(f"{where}.{key}: must be a column name or a list of column names")
            else:
                out[key] = values
    for key in ("optional", "casefold", "required"):
        if key in raw:
            if not isinstance(raw[key], bool):
                errors.append(f"{where}.{key}: must be true or false")
            else:
                out[key] = raw[key]
    return out


def parse_field(name: str, raw, where: str, errors: list) -> FieldSpec | None:
    """One field of `columns:` as a FieldSpec; its problems are appended to `errors`."""
    if isinstance(raw, str) and raw:
        return FieldSpec(column=raw)
    if not isinstance(raw, dict):
        errors.append(f"{where}: a column name or a mapping (column/columns/value/template/hook, ...)")
        return None
    values = _spec_values(name, raw, where, errors)
    if "columns" in values and name != "native_path" and "hook" not in values:
        errors.append(f"{where}: `columns` (a path made of several columns) is for native_path only")
    if "separator" in values and name != "native_path":
        errors.append(f"{where}: `separator` is for native_path only")
    if values.get("parse", PARSERS[0]) not in PARSERS:
        errors.append(f"{where}.parse: unknown parser {values['parse']!r} (known: {', '.join(PARSERS)})")
    if "hook" in values and HOOKS.get(values["hook"]) != name:
        known = ", ".join(h for h, f in HOOKS.items() if f == name) or "none"
        errors.append(f"{where}.hook: unknown hook {values['hook']!r} for {name} (known: {known})")
    if "template" in values:
        _check_template(values["template"], where, errors)
    if "map" in raw:
        if not isinstance(raw["map"], dict) or not all(isinstance(v, str) for v in raw["map"].values()):
            errors.append(f"{where}.map: a mapping of cell value -> value")
        else:
            values["map"] = {str(k).casefold(): v for k, v in raw["map"].items()}
    if "rules" in raw:
        values["rules"] = _parse_rules(raw["rules"], where, errors)
    return FieldSpec(**values)


def _check_file(file, errors: list):
    if not isinstance(file, str) or not file.strip():
        errors.append("file: the export's file name is required")
    elif PurePosixPath(file).is_absolute() or ".." in PurePosixPath(file).parts or "\\" in file:
        errors.append(f"file: {file!r} must be a path inside the export folder (no '..', not absolute)")


def _parse_fields(doc: dict, fmt, errors: list) -> dict:
    """The field specs of a contract: `columns:` for a table format, the fixed contract of a standard one."""
    if fmt in STANDARD_COLUMNS:
        if "columns" in doc:
            errors.append(f"columns: format {fmt} has a fixed column contract (docs/feeds.md); remove `columns`")
        columns = STANDARD_COLUMNS[fmt]
    else:
        columns = doc.get("columns")
        if not isinstance(columns, dict):
            errors.append("columns: a mapping of product field -> column is required for format "
                          f"{fmt} (fields: {', '.join(FIELDS)})")
            return {}
    unknown = sorted(set(columns) - set(FIELDS))
    if unknown:
        errors.append(f"columns: unknown fields {unknown} (known: {', '.join(FIELDS)})")
    missing = [f for f in REQUIRED_FIELDS if f not in columns]
    if missing:
        errors.append(f"columns: missing required fields {missing}")
    specs = {name: parse_field(name, raw, f"columns.{name}", errors)
             for name, raw in columns.items() if name in FIELDS}
    return {name: spec for name, spec in specs.items() if spec is not None}


def parse_contract(doc, source: str = "") -> ShopContract:
    """A contract from its parsed YAML (a dict); ContractError listing every problem."""
    if not isinstance(doc, dict):
        raise ContractError(f"{source}: a shop contract is a mapping with shop, file, format and columns")
    errors = []
    unknown = sorted(set(doc) - {"shop", "file", "format", "columns"})
    if unknown:
        errors.append(f"unknown keys {unknown} (known: shop, file, format, columns)")
    shop, fmt = doc.get("shop"), doc.get("format")
    if not isinstance(shop, str) or not SHOP_NAME.match(shop):
        errors.append(f"shop: {shop!r} must be a name of letters, digits, '_' and '-' (at most 64)")
    _check_file(doc.get("file"), errors)
    if fmt not in CONTRACT_FORMATS:
        errors.append(f"format: {fmt!r} is not a known format (known: {', '.join(CONTRACT_FORMATS)})")
    fields = _parse_fields(doc, fmt, errors)
    if errors:
        raise ContractError(f"{source or 'shop contract'}: invalid shop contract:\n  - " + "\n  - ".join(errors))
    return ShopContract(shop, doc["file"], fmt, fields, source)


def load_shop_contract(path: str | Path) -> ShopContract:
    """The contract in a YAML file (safe loader, at most MAX_CONTRACT_BYTES)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ContractError(f"shop contract {path} does not exist")
    if path.stat().st_size > MAX_CONTRACT_BYTES:
        raise ContractError(f"{path}: larger than {MAX_CONTRACT_BYTES} bytes: not a shop contract")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ContractError(f"{path}: not valid YAML: {e}"[:500]) from None
    return parse_contract(doc, str(path))


def known_shops(shops_dir: str | Path = SHOPS_DIR) -> list[str]:
    """The shops that have a contract in `shops_dir`."""
    return sorted(p.stem for p in Path(shops_dir).glob("*.yaml"))
