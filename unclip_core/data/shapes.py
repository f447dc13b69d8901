"""ShapesWorld: procedurally rendered 1-3 object scenes with an exact caption grammar (the bundled world).

Split across shapes_scene (types, sampling), shapes_render, shapes_text (captions, parser, foils) and
shapes_data (datasets, export); this module is the one import path. See docs/shapesworld.md.
"""
from unclip_core.data.shapes_data import ShapesConfig, ShapesDataset, ShapesFixedSet, collate_shapes, export
from unclip_core.data.shapes_render import (MAX_SIZE, MIN_SIZE, coverage, object_polygon, render, render_array,
                                            shape_contrast)
from unclip_core.data.shapes_scene import (ALL_SHAPES, BACKGROUND_RGB, COLOUR_RGB, COLOURS, CURRENT_WORLD,
                                           HELD_OUT_PAIRS, LABEL_WORDS, MAX_ANGLE, MAX_SHIFT, POSITION_XY, POSITIONS,
                                           RADIUS, RELATIONS, SHAPES, SIZES, SPLITS, WORLD_V1, WORLD_V2, WORLDS, Obj,
                                           Relation, Scene, World, canonical, complete, get_world, object_xy,
                                           sample_scene)
from unclip_core.data.shapes_text import (CAPTION_STYLES, FOIL_CATEGORIES, GRAMMAR_EXAMPLES, caption,
                                          foil_scenes, foils, parse, tokenize_words, vocabulary)

__all__ = [
    "World", "WORLD_V1", "WORLD_V2", "WORLDS", "CURRENT_WORLD", "ALL_SHAPES", "get_world", "coverage",
    "shape_contrast",
    "SHAPES", "COLOURS", "SIZES", "POSITIONS", "RELATIONS", "SPLITS", "LABEL_WORDS", "HELD_OUT_PAIRS",
    "COLOUR_RGB", "BACKGROUND_RGB", "POSITION_XY", "RADIUS", "MAX_SHIFT", "MAX_ANGLE", "MIN_SIZE", "MAX_SIZE",
    "CAPTION_STYLES", "FOIL_CATEGORIES", "GRAMMAR_EXAMPLES",
    "Obj", "Relation", "Scene", "canonical", "complete", "sample_scene", "object_xy", "object_polygon",
    "render", "render_array", "caption", "parse", "foils", "foil_scenes", "tokenize_words", "vocabulary",
    "ShapesConfig", "ShapesDataset", "ShapesFixedSet", "collate_shapes", "export",
]
