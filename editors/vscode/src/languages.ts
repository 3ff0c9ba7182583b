// The files the server indexes (mose_lsp/filetypes.py: _EXTENSIONS and _FILE_NAMES), so that
// the client syncs only those documents. tests/test_editors_vscode.py checks that the lists
// match the server's.

export const EXTENSIONS: readonly string[] = [
  '.py', '.pyi', '.pyw', '.js', '.mjs', '.cjs', '.jsx', '.ts', '.mts', '.cts', '.tsx', '.go',
  '.rs', '.java', '.c', '.h', '.cc', '.cpp', '.cxx', '.c++', '.hpp', '.hh', '.hxx', '.h++',
  '.ipp', '.inl', '.tpp', '.cs', '.rb', '.rake', '.gemspec', '.ru', '.php', '.phtml', '.lua',
  '.md', '.markdown', '.mdx', '.rst', '.txt', '.adoc', '.sh', '.bash', '.zsh', '.ksh', '.ps1',
  '.psm1', '.bat', '.cmd', '.yaml', '.yml', '.toml', '.json', '.jsonc', '.json5', '.ini',
  '.cfg', '.conf', '.xml', '.xsd', '.xsl', '.csproj', '.plist', '.html', '.htm', '.xhtml',
  '.css', '.scss', '.sass', '.less', '.sql', '.graphql', '.gql', '.proto', '.kt', '.kts',
  '.scala', '.sc', '.swift', '.dart', '.m', '.mm', '.r', '.jl', '.pl', '.pm', '.hs', '.ml',
  '.mli', '.ex', '.exs', '.erl', '.clj', '.cljs', '.zig', '.nim', '.groovy', '.gradle', '.vue',
  '.svelte', '.tf', '.cmake', '.tex',
];

export const FILE_NAMES: readonly string[] = [
  'Rakefile', 'Gemfile', 'Guardfile', 'Vagrantfile', 'Podfile', 'Brewfile', 'Dockerfile',
  'Containerfile', 'Makefile', 'GNUmakefile', 'makefile', 'CMakeLists.txt', 'Jenkinsfile',
  '.bashrc', '.bash_profile', '.zshrc', '.profile', 'README', 'LICENSE', 'COPYING', 'NOTICE',
  'AUTHORS', 'CHANGELOG', 'CONTRIBUTING',
];

/** The language client's documentSelector: files on disk the server indexes. */
export function documentSelector(): { scheme: string; pattern: string }[] {
  const exts = EXTENSIONS.map((e) => e.slice(1)).join(',');
  return [
    { scheme: 'file', pattern: `**/*.{${exts}}` },
    { scheme: 'file', pattern: `**/{${FILE_NAMES.join(',')}}` },
  ];
}
