"""Qdrant's REST API over the embedded store, served by the upserter that holds it (QDRANT_REST_PORT).

The embedded store lives in the upserter's process (one process may open it), so this is the one way for the
applications built on the collection (qdrant-client, LangChain's and LlamaIndex's Qdrant stores, curl) to read it:
``app`` routes requests, ``convert`` translates Qdrant's JSON to the engine's requests and its answers back, and
``writes`` applies the writes of a collection vecsync does not sync, where a setting allows them.
"""
