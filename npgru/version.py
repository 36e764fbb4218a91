"""npgru's release number, in one place: the package, its metadata and its messages read it.

A checkpoint's format has a number of its own (:data:`npgru.checkpoint.VERSION`), raised only
when the file's layout changes.
"""

__version__ = "0.2.0"
