// WebKitGTK reports the POSIX locale as the page's language; under LANG=C (minimal systems, CI, Xvfb sessions)
// `navigator.language` is "C", which Intl rejects ("invalid language tag: C"), and the chart library, which formats
// numbers for navigator.language when it loads, fails. A language that is not a valid tag falls back to en-US.
// main.ts imports this module first, so it runs before any other module reads the language.
export function usableLanguage(language: string | undefined): string {
  try {
    return language && Intl.getCanonicalLocales(language).length ? language : "en-US";
  } catch {
    return "en-US";
  }
}

const lang = usableLanguage(globalThis.navigator?.language);
if (globalThis.navigator && lang !== navigator.language) {
  Object.defineProperty(navigator, "language", { get: () => lang });
  Object.defineProperty(navigator, "languages", { get: () => [lang] });
}
