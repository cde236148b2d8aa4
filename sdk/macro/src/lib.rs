//! The `#[thaw_sdk::handler]` attribute. Use it through `thaw-sdk`, which documents it.

use proc_macro::TokenStream;
use quote::quote;
use syn::spanned::Spanned as _;
use syn::{FnArg, ItemFn, parse_macro_input};

/// Exports a function `fn(Request) -> impl IntoResponse` (or `async fn`) as the component's
/// `wasi:http/incoming-handler`. See `thaw_sdk` for the full documentation.
#[proc_macro_attribute]
pub fn handler(attr: TokenStream, item: TokenStream) -> TokenStream {
    if let Err(error) = no_arguments(attr, "#[thaw_sdk::handler]") {
        return error.to_compile_error().into();
    }
    let function = parse_macro_input!(item as ItemFn);
    if let Err(error) = check_signature(&function) {
        return error.to_compile_error().into();
    }
    let name = &function.sig.ident;
    // A plain `fn` takes the path it always took (no executor: the smallest module and the
    // cheapest request); an `async fn` runs on the SDK's executor.
    let serve = if function.sig.asyncness.is_some() {
        quote! { ::thaw_sdk::__private::serve_async(request, response_out, #name); }
    } else {
        quote! { ::thaw_sdk::__private::serve(request, response_out, #name); }
    };
    quote! {
        #function

        const _: () = {
            struct __ThawHandler;
            impl ::thaw_sdk::__private::wasi::exports::http::incoming_handler::Guest for __ThawHandler {
                fn handle(
                    request: ::thaw_sdk::__private::wasi::http::types::IncomingRequest,
                    response_out: ::thaw_sdk::__private::wasi::http::types::ResponseOutparam,
                ) {
                    #serve
                }
            }
            ::thaw_sdk::__private::wasi::http::proxy::export!(
                __ThawHandler with_types_in ::thaw_sdk::__private::wasi
            );
        };
    }
    .into()
}

fn check_signature(function: &ItemFn) -> syn::Result<()> {
    let sig = &function.sig;
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "a thaw handler cannot be generic",
        ));
    }
    if sig.inputs.len() != 1 || matches!(sig.inputs.first(), Some(FnArg::Receiver(_))) {
        return Err(syn::Error::new(
            sig.inputs.span(),
            "a thaw handler takes exactly one argument: `fn handle(req: thaw_sdk::Request) -> impl thaw_sdk::IntoResponse` (or `async fn`)",
        ));
    }
    Ok(())
}

/// Exports a `fn()` as the component's `wizer-initialize` function: thaw runs it once at
/// deploy and snapshots the result. See `thaw_sdk` for the full documentation.
#[proc_macro_attribute]
pub fn init(attr: TokenStream, item: TokenStream) -> TokenStream {
    if let Err(error) = no_arguments(attr, "#[thaw_sdk::init]") {
        return error.to_compile_error().into();
    }
    let function = parse_macro_input!(item as ItemFn);
    let sig = &function.sig;
    if sig.asyncness.is_some()
        || !sig.inputs.is_empty()
        || !matches!(sig.output, syn::ReturnType::Default)
        || !sig.generics.params.is_empty()
    {
        return syn::Error::new(
            sig.span(),
            "a thaw init function is `fn name()`: no arguments, no return value, not async",
        )
        .to_compile_error()
        .into();
    }
    let name = &sig.ident;
    quote! {
        #function

        const _: () = {
            struct __ThawInit;
            impl ::thaw_sdk::__init::Guest for __ThawInit {
                fn wizer_initialize() {
                    #name();
                }
            }
            ::thaw_sdk::__init::export_init!(__ThawInit with_types_in ::thaw_sdk::__init);
        };
    }
    .into()
}

fn no_arguments(attr: TokenStream, name: &str) -> syn::Result<()> {
    if attr.is_empty() {
        return Ok(());
    }
    let attr = proc_macro2::TokenStream::from(attr);
    Err(syn::Error::new(
        attr.span(),
        format!("{name} takes no arguments"),
    ))
}
