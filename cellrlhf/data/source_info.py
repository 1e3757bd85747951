"""How the data manifest's source is described in cards: file names, license, citation, never
local paths."""

from __future__ import annotations

from pathlib import Path

__all__ = ["source_lines", "source_license"]


def source_lines(source) -> list[str]:
    """What the data manifest says about the source data (file names only, never local paths)."""
    if isinstance(source, dict):
        name = source.get("filename") or source.get("name") or source.get("path")
        lines = [f"- Source: `{Path(str(name)).name}`" if name else "- Source: see the manifest"]
        for key, label in (("description", "Description"), ("license", "License")):
            if source.get(key):
                lines.append(f"- {label}: {source[key]}")
        if source.get("url"):
            lines.append(f"- Source URL: {source['url']}")
        if source.get("citation"):
            lines.append(f"- Please cite: {source['citation']}")
        return lines
    items = source if isinstance(source, list) else [source]
    names = [
        Path(str(s.get("name", s.get("path", "")) if isinstance(s, dict) else s)).name
        for s in items
        if s
    ]
    return [f"- Sources: {', '.join(names)}"] if names else []


def source_license(source) -> str | None:
    """The source data's license as a lower-case Hub license id (``"bsd-3-clause"``), if given."""
    if isinstance(source, dict) and isinstance(source.get("license"), str) and source["license"]:
        return source["license"].strip().lower()
    return None
