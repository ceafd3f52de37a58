"""The expat set-up the XML readers (VOC, CVAT) share: defusedxml's defences without its tree.

Example:
    >>> ex = safe_expat()
    >>> ex.Parse(b"<annotation><size/></annotation>", True)
    1
"""

from __future__ import annotations

from typing import Any
from xml.parsers import expat

from defusedxml.ElementTree import DefusedXMLParser

_DEFUSED = DefusedXMLParser()


def safe_expat() -> Any:
    """A fresh expat parser carrying defusedxml's defences (its handlers refuse entity
    declarations, unparsed entities and external references) and no tree building."""
    ex = expat.ParserCreate()
    ex.EntityDeclHandler = _DEFUSED.defused_entity_decl
    ex.UnparsedEntityDeclHandler = _DEFUSED.defused_unparsed_entity_decl
    ex.ExternalEntityRefHandler = _DEFUSED.defused_external_entity_ref_handler
    return ex


__all__ = ["safe_expat"]
