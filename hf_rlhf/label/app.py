"""The labeling web app: a Starlette ASGI app, server-rendered Jinja2 templates, a little vanilla JS.

`create_app(db_url)` builds it over one database; `hf-rlhf label serve` runs it with uvicorn. Routes:

| route | who | what |
|---|---|---|
| `GET /login/{token}` | anyone | a login link: sets the session cookie, then `/` (labeler) or `/admin` |
| `GET /` | labeler | the project, its guidelines and the labeler's progress |
| `GET /task` | labeler | the next task (redirect to `/task/{id}`), or "all done" |
| `GET /task/{id}`, `POST /task/{id}` | labeler | one ranking or demonstration task; the form submits or skips |
| `GET /admin`, `GET /admin/projects/{id}` | admin | projects, progress, agreement; labelers and their links |
| `POST /admin/projects/{id}/labelers`, `POST /admin/labelers/{id}/link` | admin | add a labeler, new login link |
| `POST /logout` | both | end the session |

Every page is sent with a strict Content-Security-Policy (scripts and styles from `/static` only), no referrer (a
login link never leaks), `no-store` caching and no framing. Prompts and completions are autoescaped text; the
guidelines are markdown with raw HTML escaped (markdown-it-py, `html=False`). Every POST needs the session's CSRF
token and bodies are capped at `MAX_BODY_BYTES`.
"""

from __future__ import annotations

import os
import secrets
import time
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .agreement import project_agreement
from .auth import COOKIE, check_csrf, csrf_token, hash_token, login_path
from .db import Database
from .models import RANKING, Admin, Labeler, Project
from .projects import add_labeler, new_login_link
from .tasks import (
    FLAGS,
    MAX_COMMENT_CHARS,
    MAX_DEMONSTRATION_CHARS,
    BadAnswer,
    NotFound,
    Submission,
    elapsed,
    load_assignment,
    next_assignment,
    progress,
    ranks_from_order,
    submit,
)

MAX_BODY_BYTES = 256 * 1024  # the largest form a POST may send (a demonstration is at most 20,000 characters)
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def render_markdown(text: str) -> Markup:
    """Guidelines as HTML: CommonMark with raw HTML escaped and unsafe link schemes (javascript:...) refused."""
    from markdown_it import MarkdownIt

    return Markup(MarkdownIt("commonmark", {"html": False}).render(text or ""))


def chat(prompt: Any) -> list[dict[str, str]]:
    """A prompt as the messages the page shows (a text prompt is one user turn)."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


class Session:
    """Who sent a request: a labeler (with their project) or an admin, from the cookie's token."""

    def __init__(self, token_hash: str, labeler: Labeler | None = None, admin: bool = False):
        self.token_hash, self.labeler, self.admin = token_hash, labeler, admin


def create_app(db_url: str | Database, *, public_url: str | None = None) -> Starlette:
    """The labeling app over the database at `db_url` (created and migrated if needed).

    Args:
        db_url: an SQLAlchemy URL (`sqlite:///labels.db`, `postgresql+psycopg://...`) or an open `Database`.
        public_url: the address labelers reach the server at, for the login links the admin pages show
            (default: the address of the admin's request).
    """
    db = db_url if isinstance(db_url, Database) else Database(db_url)
    secret = db.setting("secret")
    env = Environment(loader=PackageLoader("hf_rlhf.label", "templates"), autoescape=select_autoescape(["html"]))
    env.globals.update(FLAGS=FLAGS, MAX_COMMENT=MAX_COMMENT_CHARS, MAX_DEMONSTRATION=MAX_DEMONSTRATION_CHARS)

    def page(name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(env.get_template(name).render(**context), status_code=status_code, headers=HEADERS)

    def error(status: int, message: str) -> HTMLResponse:
        return page("error.html", status, status=status, message=message)

    def session_of(request: Request) -> Session | None:
        token = request.cookies.get(COOKIE)
        if not token or len(token) > 128:
            return None
        token_hash = hash_token(token)
        with db.session() as s:
            labeler = s.scalar(select(Labeler).where(Labeler.token_hash == token_hash, Labeler.active))
            if labeler is not None:
                return Session(token_hash, labeler=labeler)
            if s.scalar(select(Admin.id).where(Admin.token_hash == token_hash)) is not None:
                return Session(token_hash, admin=True)
        return None

    async def form_of(request: Request, session: Session):
        """The POSTed form, or an error response: too large (413) or without the session's CSRF token (403)."""
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return error(413, f"the form is larger than {MAX_BODY_BYTES // 1024} KiB")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return error(413, f"the form is larger than {MAX_BODY_BYTES // 1024} KiB")
        request._body = body  # read once, kept for `form()`
        form = await request.form(max_files=0, max_fields=200, max_part_size=MAX_BODY_BYTES)
        if not check_csrf(secret, session.token_hash, form.get("csrf")):
            return error(403, "missing or wrong CSRF token: reload the page and submit again")
        return form

    def labeler_only(request: Request) -> Session | Response:
        session = session_of(request)
        if session is None:
            return error(403, "not logged in: open your login link")
        if session.labeler is None:
            return RedirectResponse("/admin", 303)
        return session

    def admin_only(request: Request) -> Session | Response:
        session = session_of(request)
        if session is None or not session.admin:
            return error(403, "admin pages need the admin login link (hf-rlhf label admin-link)")
        return session

    def login(request: Request) -> Response:
        token = request.path_params["token"]
        token_hash = hash_token(token)
        with db.session() as s:
            labeler = s.scalar(select(Labeler.id).where(Labeler.token_hash == token_hash, Labeler.active))
            admin = s.scalar(select(Admin.id).where(Admin.token_hash == token_hash))
        if labeler is None and admin is None:
            return error(403, "this login link is not valid (it may have been replaced): ask for a new one")
        response = RedirectResponse("/" if labeler is not None else "/admin", 303, headers=HEADERS)
        secure = request.url.scheme == "https"
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=secure, max_age=30 * 86_400)
        return response

    async def logout(request: Request) -> Response:
        session = await run_in_threadpool(session_of, request)
        if session is None:
            return error(403, "not logged in")
        form = await form_of(request, session)
        if isinstance(form, Response):
            return form
        response = RedirectResponse("/logged-out", 303, headers=HEADERS)
        response.delete_cookie(COOKIE)
        return response

    def logged_out(request: Request) -> Response:
        return error(200, "logged out: open your login link to come back")

    def labeler_context(session: Session) -> dict[str, Any]:
        labeler = session.labeler
        with db.session() as s:
            project = s.get(Project, labeler.project_id)
        figures = progress(db, project.id)
        mine = next(e for e in figures["labelers"] if e["id"] == labeler.id)
        return {
            "items_total": figures["items"],
            "project": project,
            "labeler": labeler,
            "mine": mine,
            "guidelines": render_markdown(project.guidelines),
            "csrf": csrf_token(secret, session.token_hash),
        }

    def home(request: Request) -> Response:
        session = labeler_only(request)
        if isinstance(session, Response):
            return session
        return page("home.html", **labeler_context(session))

    def next_task(request: Request) -> Response:
        session = labeler_only(request)
        if isinstance(session, Response):
            return session
        assignment_id = next_assignment(db, session.labeler.id)
        if assignment_id is None:
            return page("done.html", **labeler_context(session))
        return RedirectResponse(f"/task/{assignment_id}", 303, headers=HEADERS)

    async def task(request: Request) -> Response:
        session = await run_in_threadpool(labeler_only, request)
        if isinstance(session, Response):
            return session
        form = await form_of(request, session) if request.method == "POST" else None
        if isinstance(form, Response):
            return form
        return await run_in_threadpool(task_page, session, int(request.path_params["id"]), form)

    def task_page(session: Session, assignment_id: int, form) -> Response:
        """The task's page (GET), or the submitted answer stored (POST, `form` read and CSRF-checked)."""
        try:
            assignment, item, answer = load_assignment(db, session.labeler.id, assignment_id)
        except NotFound:
            return error(404, "no such task")
        if form is not None:
            try:
                submission = read_submission(form, item.completions)
                submit(db, session.labeler.id, assignment.id, submission)
            except BadAnswer as e:
                return error(400, str(e))
            except NotFound:
                return error(404, "no such task")
            return RedirectResponse("/task", 303, headers=HEADERS)
        if answer is not None:  # answered already (the back button): on to the next one
            return RedirectResponse("/task", 303, headers=HEADERS)
        context = labeler_context(session)
        shown = [(i, item.completions[i]) for i in assignment.order] if assignment.order else []
        template = "ranking.html" if context["project"].kind == RANKING else "demonstration.html"
        return page(
            template,
            **context,
            assignment=assignment,
            messages=chat(item.prompt),
            completions=shown,
            nonce=secrets.token_urlsafe(16),
            started=f"{time.time():.1f}",
        )

    def admin_post(handler):
        """An admin POST: the session and the CSRF-checked form read on the event loop, `handler`'s database work
        in the thread pool."""

        async def endpoint(request: Request) -> Response:
            session = await run_in_threadpool(admin_only, request)
            if isinstance(session, Response):
                return session
            form = await form_of(request, session)
            if isinstance(form, Response):
                return form
            return await run_in_threadpool(handler, request, session, form)

        return endpoint

    def base_url(request: Request) -> str:
        return (public_url or str(request.base_url)).rstrip("/")

    def project_page(request: Request, session: Session, project_id: int, new_link: dict | None = None) -> Response:
        with db.session() as s:
            project = s.get(Project, project_id)
        if project is None:
            return error(404, "no such project")
        return page(
            "admin_project.html",
            project=project,
            progress=progress(db, project_id),
            agreement=project_agreement(db, project_id) if project.kind == RANKING else None,
            csrf=csrf_token(secret, session.token_hash),
            new_link=new_link,
        )

    def admin(request: Request) -> Response:
        session = admin_only(request)
        if isinstance(session, Response):
            return session
        with db.session() as s:
            ids = s.scalars(select(Project.id).order_by(Project.id)).all()
        return page(
            "admin.html",
            projects=[progress(db, i) | {"id": i} for i in ids],
            csrf=csrf_token(secret, session.token_hash),
        )

    def admin_project(request: Request) -> Response:
        session = admin_only(request)
        if isinstance(session, Response):
            return session
        return project_page(request, session, int(request.path_params["id"]))

    def admin_add_labeler(request: Request, session: Session, form) -> Response:
        project_id, name = int(request.path_params["id"]), str(form.get("name", "")).strip()
        with db.session() as s:
            project = s.get(Project, project_id)
        if project is None:
            return error(404, "no such project")
        if not name or len(name) > 200:
            return error(400, "a labeler's name must be 1-200 characters")
        try:
            token = add_labeler(db, project.name, name)
        except ValueError as e:
            return error(400, str(e))
        link = {"name": name, "url": base_url(request) + login_path(token)}
        return project_page(request, session, project_id, new_link=link)

    def admin_new_link(request: Request, session: Session, form) -> Response:
        with db.session() as s:
            labeler = s.get(Labeler, int(request.path_params["id"]))
        if labeler is None:
            return error(404, "no such labeler")
        token = new_login_link(db, labeler.id)
        link = {"name": labeler.name, "url": base_url(request) + login_path(token)}
        return project_page(request, session, labeler.project_id, new_link=link)

    def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    def favicon(request: Request) -> Response:  # browsers ask for it; no icon, no 404 in their console
        return Response(status_code=204)

    static = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
    routes = [
        Route("/", home),
        Route("/login/{token}", login),
        Route("/logout", logout, methods=["POST"]),
        Route("/logged-out", logged_out),
        Route("/task", next_task),
        Route("/task/{id:int}", task, methods=["GET", "POST"]),
        Route("/admin", admin),
        Route("/admin/projects/{id:int}", admin_project),
        Route("/admin/projects/{id:int}/labelers", admin_post(admin_add_labeler), methods=["POST"]),
        Route("/admin/labelers/{id:int}/link", admin_post(admin_new_link), methods=["POST"]),
        Route("/healthz", health),
        Route("/favicon.ico", favicon),
        Mount("/static", StaticFiles(directory=static), name="static"),
    ]
    app = Starlette(routes=routes)
    app.state.db = db
    return app


def read_submission(form, completions: list[str] | None) -> Submission:
    """A `Submission` from a task's form fields (see the templates): `action` submit/skip, `nonce`, `started`,
    `comment`; ranking: `order` (original indices, top first, comma-separated), `tied` (K-1 of 0/1),
    `all_unacceptable`, `flag_<i>` (repeated: unsafe, wrong, instructions); demonstration: `demonstration`."""
    action = form.get("action", "submit")
    if action not in ("submit", "skip"):
        raise BadAnswer(f"unknown action {action!r}")
    sub = Submission(
        nonce=str(form.get("nonce", "")),
        skipped=action == "skip",
        comment=str(form.get("comment", "")).strip(),
        seconds=elapsed(form.get("started")),
    )
    if completions:
        k = len(completions)
        try:
            order = [int(x) for x in str(form.get("order", "")).split(",") if x != ""]
            tied = [x == "1" for x in str(form.get("tied", "")).split(",")] if k > 1 else []
        except ValueError:
            raise BadAnswer("the ranking fields 'order' and 'tied' must be comma-separated numbers") from None
        if not sub.skipped:
            sub.ranking = ranks_from_order(order, tied)
        sub.all_unacceptable = form.get("all_unacceptable") in ("1", "on", "true")
        sub.flags = [sorted(set(form.getlist(f"flag_{i}"))) for i in range(k)]
        if any(f not in FLAGS for fs in sub.flags for f in fs):
            raise BadAnswer(f"unknown flag: expected {sorted(FLAGS)}")
    else:
        sub.demonstration = str(form.get("demonstration", ""))
    return sub
