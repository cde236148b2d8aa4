//! A CGI program (RFC 3875), as any language with a WASI preview1 target can write one:
//! counts the lines, words and bytes of the request body, and echoes the CGI variables it
//! was given. `?format=json` answers JSON; a body that is not UTF-8 gets a 422.

use std::io::{Read, Write};

fn main() {
    let mut body = Vec::new();
    std::io::stdin()
        .read_to_end(&mut body)
        .expect("reading stdin");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let json = var("QUERY_STRING").split('&').any(|kv| kv == "format=json");

    let mut out = std::io::stdout().lock();
    let Ok(text) = std::str::from_utf8(&body) else {
        write!(out, "Status: 422 Unprocessable Content\r\nContent-Type: text/plain\r\n\r\nthe body is not UTF-8\n").unwrap();
        return;
    };
    let lines = text.lines().count();
    let words = text.split_whitespace().count();
    let bytes = body.len();
    if json {
        write!(
            out,
            "Content-Type: application/json\r\n\r\n{{\"lines\":{lines},\"words\":{words},\"bytes\":{bytes}}}\n"
        )
        .unwrap();
    } else {
        write!(
            out,
            "Content-Type: text/plain; charset=utf-8\r\nX-Word-Count: {words}\r\n\r\n\
             lines {lines}\nwords {words}\nbytes {bytes}\n\
             method {}\nscript {}\npath {}\nquery {}\n",
            var("REQUEST_METHOD"),
            var("SCRIPT_NAME"),
            var("PATH_INFO"),
            var("QUERY_STRING"),
        )
        .unwrap();
    }
    out.flush().unwrap();
}
