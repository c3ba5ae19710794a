"""parasim's model of the world and its SimPy engine.

Layering (imports point one way): ``units``/``errors`` <- ``model`` (layer graphs), ``cluster``,
``scenario`` <- ``plan`` <- ``strategies`` <- ``engine`` (the only part that imports SimPy)
<- ``predict`` <- ``cli``.
"""

__version__ = "0.1.0"
