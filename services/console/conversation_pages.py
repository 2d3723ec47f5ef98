"""Conversation routes of the console: sessions to search, and one session as a trace."""

from __future__ import annotations

from flask import Blueprint, request

from services.console import conversations as conv


def register(bp: Blueprint, plane, page, safe) -> None:
    @bp.get("/conversations")
    def conversations():
        args = {k: v for k, v in request.args.items() if v}
        try:
            flt = conv.SessionFilter.from_mapping(args)
        except conv.SearchError as e:
            return page("message.html", title="Bad search", message=str(e)), 400
        with plane.reader() as cur:
            rows = safe(lambda: conv.list_sessions(cur, flt), "sessions")
            choices = safe(lambda: conv.filter_choices(cur), "search choices", {"versions": [], "task_types": []})
        return page("conversations.html", rows=rows, args=args, choices=choices, labels=conv.LABELS, limit=flt.limit,
                    offset=flt.offset)

    @bp.get("/conversations/<session_id>")
    def conversation(session_id: str):
        with plane.reader() as cur:
            session = conv.get_session(cur, session_id)
        if session is None:
            return page("message.html", title="No such session",
                        message=f"no request of session {session_id!r} has landed"), 404
        return page("conversation.html", s=session, chart=conv.latency_chart(session))
