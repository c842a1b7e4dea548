"""Stand-in of modules/infotext_utils.py: PasteField, quoting, parsing of the parameters line, paste."""

import json
import re

re_param = re.compile(r'\s*(\w[-\w /]+):\s*("(?:[^"\\]|\\.)+"|[^,]*)(?:,|$)')
"""`key: value` pairs, the value JSON-quoted or up to the next comma (the host's pattern, in other words)."""


class PasteField(tuple):
    """Mirrors infotext_utils.PasteField: (component, infotext key or function of the parsed params)."""

    def __new__(cls, component, target, *, api=None):
        field = tuple.__new__(cls, (component, target))
        field.component, field.api = component, api
        field.label, field.function = (None, target) if callable(target) else (target, None)
        return field


def quote(text):
    """Mirrors infotext_utils.quote."""
    needs_quotes = any(mark in str(text) for mark in (",", "\n", ":"))
    return json.dumps(text, ensure_ascii=False) if needs_quotes else text


def unquote(text):
    """Mirrors infotext_utils.unquote."""
    if not (text.startswith('"') and text.endswith('"')):
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def parse_parameters_line(line):
    """Mirrors the `for k, v in re_param.findall(lastline)` loop of infotext_utils.parse_generation_parameters
    (without the Size-1/Size-2 split, which no ToDo key needs)."""
    res = {}
    for k, v in re_param.findall(line):
        if v and v[0] == '"' and v[-1] == '"':
            v = unquote(v)
        res[k] = v
    return res


def parse_generation_parameters(x):
    """Mirrors infotext_utils.parse_generation_parameters for the parameters line: the last line counts as
    parameters only with at least 3 `key: value` pairs; prompts and the Size/Hires extras are left out."""
    *_, lastline = x.strip().split("\n")
    if len(re_param.findall(lastline)) < 3:
        return {}
    return parse_parameters_line(lastline)


def api_script_values(paste_fields, inputs, params):
    """Mirrors modules/api/api.py Api.apply_infotext for script controls: {index in `inputs`: value} for every
    field whose function or key gives a value, converted to the type of the control's value when it differs."""
    indexes = {id(component): index for index, component in enumerate(inputs) if component is not None}
    values = {}
    for field in paste_fields:
        if id(field.component) not in indexes:
            continue
        value = params.get(field.label) if field.function is None else field.function(params)
        if value is None:
            continue
        kind = type(field.component.value)
        if not isinstance(value, kind):
            value = kind(value)
        values[indexes[id(field.component)]] = value
    return values


def paste_values(paste_fields, params):
    """Mirrors connect_paste.paste_func's per-field loop: the value each control gets, None = left alone."""
    res = []
    for output, key in paste_fields:
        v = key(params) if callable(key) else params.get(key, None)
        if v is None:
            res.append(None)
            continue
        valtype = type(output.value)
        if valtype is bool and v == "False":
            val = False
        elif valtype is int:
            val = float(v)
        else:
            val = valtype(v)
        res.append(val)
    return res


def paste(paste_fields, line):
    """Mirrors connect_paste.paste_func: parse the parameters, run the infotext_pasted callbacks (which may add
    keys), then the per-field loop."""
    from modules import script_callbacks

    params = parse_parameters_line(line)
    script_callbacks.infotext_pasted_callback(line, params)
    return paste_values(paste_fields, params)


def send_to_fields(paste_fields, paste_field_names):
    """Mirrors the "Send to" wiring of infotext_utils.connect_paste_params_buttons: the controls of a tab whose
    paste target is `in` the names (of the built-in fields and the scripts' `paste_field_names`), in order."""
    return [field for field, name in paste_fields if name in paste_field_names]
