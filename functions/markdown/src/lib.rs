//! Real work on the body: Markdown in, HTML out (CommonMark with tables, strikethrough and
//! task lists, via pulldown-cmark).

use pulldown_cmark::{Options, Parser, html};
use thaw_sdk::{Error, Request, Response, handler};

#[handler]
fn render(req: Request) -> Result<Response, Error> {
    let markdown = thaw_sdk::text(&req)?;
    let options =
        Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS;
    let mut out = String::with_capacity(markdown.len() * 3 / 2);
    html::push_html(&mut out, Parser::new_ext(markdown, options));
    Ok(thaw_sdk::http::Response::builder()
        .header("content-type", "text/html; charset=utf-8")
        .body(out.into_bytes())?)
}
