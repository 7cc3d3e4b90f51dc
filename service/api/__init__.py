"""The HTTP layer: one router per resource (:mod:`service.api.routes`) and their dependencies
(:mod:`service.api.deps`)."""
