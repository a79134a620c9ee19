#!/usr/bin/env python3
"""Check that the size-prefixed public structs of two abidw corpora differ only by members
appended at the end (docs/ABI.md). abidiff's suppression for those structs (abi/*.abignore)
hides every change of them, so this script checks what it hides: each member of the old struct
must still be there with the same name, offset and type, in the same order, and new members
may only follow the old last one.

usage: struct_tails.py OLD.abi NEW.abi STRUCT...      exit 0 ok, 1 incompatible, 2 usage/error
"""
import sys
import xml.etree.ElementTree as ET


def load(path):
    root = ET.parse(path).getroot()
    by_id, structs = {}, {}
    for el in root.iter():
        tid = el.get("id")
        if tid:
            by_id.setdefault(tid, el)
        if el.tag == "class-decl" and el.get("name") and el.find("data-member") is not None:
            structs.setdefault(el.get("name"), el)
    return by_id, structs


def type_sig(by_id, tid, depth=0):
    """A string naming a type by structure, independent of the corpus's type ids."""
    el = by_id.get(tid)
    if el is None or depth > 12:
        return "?" + (tid or "")
    t = el.tag
    sub = lambda x: type_sig(by_id, x, depth + 1)
    if t == "type-decl":
        return "%s:%s" % (el.get("name"), el.get("size-in-bits"))
    if t == "typedef-decl":
        return "%s=%s" % (el.get("name"), sub(el.get("type-id")))
    if t == "pointer-type-def":
        return "ptr(%s)" % sub(el.get("type-id"))
    if t == "qualified-type-def":
        q = [k for k in ("const", "volatile", "restrict") if el.get(k) == "yes"]
        return "%s(%s)" % ("+".join(q), sub(el.get("type-id")))
    if t == "array-type-def":
        return "array%s(%s)" % (el.get("size-in-bits"), sub(el.get("type-id")))
    if t == "enum-decl":
        return "enum %s" % el.get("name")
    if t == "class-decl":  # by name: a named struct is compared on its own
        return "%s %s" % ("struct" if el.get("is-struct") == "yes" else "class", el.get("name"))
    if t == "union-decl":
        return "union %s" % el.get("name")
    if t == "function-type":
        params = [sub(p.get("type-id")) for p in el.findall("parameter")]
        ret = el.find("return")
        return "fn(%s)->%s" % (",".join(params), sub(ret.get("type-id")) if ret is not None else "?")
    return t


def members(by_id, el):
    out = []
    for dm in el.findall("data-member"):
        v = dm.find("var-decl")
        out.append((v.get("name"), int(dm.get("layout-offset-in-bits")), type_sig(by_id, v.get("type-id"))))
    return out


def main(argv):
    if len(argv) < 4:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    old_ids, old_structs = load(argv[1])
    new_ids, new_structs = load(argv[2])
    bad = 0
    for name in argv[3:]:
        if name not in old_structs:
            continue  # not in the baseline (yet): nothing to keep compatible
        if name not in new_structs:
            print("FAIL: struct %s is gone" % name)
            bad = 1
            continue
        old, new = members(old_ids, old_structs[name]), members(new_ids, new_structs[name])
        for i, m in enumerate(old):
            if i >= len(new) or new[i] != m:
                got = new[i] if i < len(new) else "nothing"
                print("FAIL: struct %s member %d was %s at bit %d (%s), now %s" % (name, i, m[0], m[1], m[2], got))
                bad = 1
                break
        else:
            for m in new[len(old):]:
                print("ok: struct %s appends %s at bit %d" % (name, m[0], m[1]))
    return bad


if __name__ == "__main__":
    sys.exit(main(sys.argv))
